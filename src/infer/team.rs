//! A team of persistent helper threads for one predictor: a large layer is
//! cut into units of whole panels, and the calling thread and the helpers
//! claim units from a shared bitmask.
//!
//! Why not rayon: a batch-1 forward pass of 784-500-10 takes microseconds,
//! and waking a pool thread through the OS costs about as much. A helper
//! spins (with `spin_loop`) for a short while after its last unit, so calls
//! that follow each other closely find it awake, then parks, so an idle
//! predictor costs nothing.
//!
//! Each participant prefers its own contiguous range of units, so with a
//! steady stream of calls every core keeps streaming the same slice of the
//! weights from its own L2 cache (half of 784x500 f32 is 0.8 MB). A unit is
//! claimed by whoever comes first: when a helper is late (descheduled on a
//! busy machine, or parked), the caller takes its units instead of waiting
//! for it. Which thread computes a panel never changes its values (see
//! [`super::kernels`]), so the results are the same bits either way.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use super::kernels::{forward_panels, Isa, PackedLinear, Rows};

/// Panels per unit (64 outputs): small enough to balance two cores on a
/// 500-output layer, large enough for the 4-panel tile.
const UNIT_PANELS: usize = 4;

/// At most this many units per call: one bit each in [`Shared::claimed`].
const MAX_UNITS: usize = 64;

/// One call's work, written by the caller while no unit can be claimed.
#[derive(Clone, Copy)]
struct Job {
    isa: Isa,
    layer: *const PackedLinear,
    io: Rows,
    unit_panels: usize,
}

struct Shared {
    /// Bit `u` set: unit `u` of the current job is taken, or does not
    /// exist. All ones: there is no job.
    claimed: AtomicU64,
    /// Units finished by the helpers in the current job.
    done: AtomicUsize,
    /// Units of the current job, for the helpers' preferred ranges only (a
    /// stale value costs cache locality, never correctness).
    units: AtomicUsize,
    /// Per helper: it is parked or about to park, and needs an unpark.
    sleeping: Vec<AtomicBool>,
    stop: AtomicBool,
    /// How long a helper spins before it parks.
    spin: Duration,
    job: UnsafeCell<Job>,
}

// SAFETY: `job` is written only by the team's owner, while `claimed` is all
// ones and every claimed unit is done (no helper can claim a unit, and a
// helper reads `job` only after claiming one); helpers read it after a
// successful compare-and-swap on `claimed`, which acquires the owner's
// release store that published it. The raw pointers inside point to data
// the owner keeps alive and unaliased until every unit of the job is done.
unsafe impl Sync for Shared {}
// SAFETY: as above; nothing in `Shared` is tied to a thread.
unsafe impl Send for Shared {}

impl Shared {
    /// Claim a unit: the first free one in `prefer`, else the first free
    /// one at all. `None` when every unit is taken.
    fn claim(&self, prefer: u64) -> Option<usize> {
        let mut m = self.claimed.load(Ordering::Acquire);
        loop {
            if m == u64::MAX {
                return None;
            }
            let free = !m;
            let pick = if free & prefer != 0 { free & prefer } else { free };
            let bit = pick & pick.wrapping_neg();
            match self
                .claimed
                .compare_exchange_weak(m, m | bit, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(bit.trailing_zeros() as usize),
                Err(now) => m = now,
            }
        }
    }

    /// Compute unit `u` of the current job.
    ///
    /// # Safety
    /// The caller claimed `u` in the current job and has not finished it.
    unsafe fn run_unit(&self, u: usize) {
        // SAFETY: while a unit of the job is claimed and not done, the owner
        // does not write `job` (see `unsafe impl Sync`).
        let job = unsafe { *self.job.get() };
        // SAFETY: the owner keeps the layer alive for the job.
        let layer = unsafe { &*job.layer };
        let p0 = u * job.unit_panels;
        let p1 = (p0 + job.unit_panels).min(layer.panels);
        // SAFETY: the owner checked the extents of `io` for the whole layer
        // and that `isa` runs here; units cover disjoint panel ranges, so
        // disjoint columns of `y`.
        unsafe { forward_panels(job.isa, layer, p0, p1, job.io) };
    }
}

/// The bits of units `t * units / n..(t + 1) * units / n`: participant
/// `t`'s preferred range among `n`.
fn range_bits(t: usize, n: usize, units: usize) -> u64 {
    let (a, b) = (t * units / n, (t + 1) * units / n);
    let ones = |k: usize| if k >= 64 { u64::MAX } else { (1u64 << k) - 1 };
    ones(b) & !ones(a)
}

/// The caller plus `threads - 1` helper threads.
pub struct Team {
    shared: Arc<Shared>,
    threads: Vec<Thread>,
    handles: Vec<JoinHandle<()>>,
}

impl Team {
    /// Start `threads - 1` helpers that spin for `spin` after their last
    /// unit before they park. With `threads <= 1` there are none and every
    /// call runs on the caller.
    pub fn new(threads: usize, spin: Duration) -> Self {
        let helpers = threads.saturating_sub(1);
        let shared = Arc::new(Shared {
            claimed: AtomicU64::new(u64::MAX),
            done: AtomicUsize::new(0),
            units: AtomicUsize::new(0),
            sleeping: (0..helpers).map(|_| AtomicBool::new(false)).collect(),
            stop: AtomicBool::new(false),
            spin,
            job: UnsafeCell::new(Job {
                isa: Isa::Portable,
                layer: std::ptr::null(),
                io: Rows {
                    x: std::ptr::null(),
                    xs: 0,
                    rows: 0,
                    y: std::ptr::null_mut(),
                    ys: 0,
                    relu: false,
                },
                unit_panels: 1,
            }),
        });
        let mut handles = Vec::with_capacity(helpers);
        for h in 0..helpers {
            let s = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("wgtrain-infer-{}", h + 1))
                .spawn(move || helper(&s, h, helpers + 1));
            match spawned {
                Ok(handle) => handles.push(handle),
                // Fewer helpers only means less parallelism; the caller
                // claims whatever nobody else does.
                Err(e) => {
                    log::warn!("cannot start an inference helper thread: {e}");
                    break;
                }
            }
        }
        Team {
            threads: handles.iter().map(|h| h.thread().clone()).collect(),
            shared,
            handles,
        }
    }

    /// Threads that take part in a call, the caller included.
    pub fn size(&self) -> usize {
        self.handles.len() + 1
    }

    /// Run `layer` over `io`, split by units of panels over the team.
    ///
    /// # Safety
    /// `isa` runs on this CPU, and `io` satisfies the contract of
    /// [`forward_panels`] for all of `layer`'s panels; `layer` and the
    /// memory of `io` stay valid until this returns (it waits for every
    /// unit).
    pub unsafe fn forward(&self, isa: Isa, layer: &PackedLinear, io: Rows) {
        let unit_panels = UNIT_PANELS.max(layer.panels.div_ceil(MAX_UNITS));
        let units = layer.panels.div_ceil(unit_panels);
        if self.handles.is_empty() || units < 2 {
            // SAFETY: the caller's contract.
            return unsafe { forward_panels(isa, layer, 0, layer.panels, io) };
        }
        let s = &*self.shared;
        // SAFETY: `claimed` is all ones and the previous job's units are all
        // done (this method waits for them), so no helper reads `job`.
        unsafe {
            *s.job.get() = Job {
                isa,
                layer,
                io,
                unit_panels,
            }
        };
        s.done.store(0, Ordering::Relaxed);
        s.units.store(units, Ordering::Relaxed);
        let absent = if units >= 64 { 0 } else { u64::MAX << units };
        s.claimed.store(absent, Ordering::SeqCst);
        for (t, sleeping) in self.threads.iter().zip(&s.sleeping) {
            if sleeping.load(Ordering::SeqCst) {
                t.unpark();
            }
        }
        let prefer = range_bits(0, self.size(), units);
        let mut mine = 0;
        while let Some(u) = s.claim(prefer) {
            // SAFETY: just claimed.
            unsafe { s.run_unit(u) };
            mine += 1;
        }
        // Every unit is claimed; wait for the helpers' ones to finish.
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < units - mine {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1 << 12) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in &self.threads {
            t.unpark();
        }
        for h in self.handles.drain(..) {
            // A helper that panicked has nothing left to clean up.
            let _ = h.join();
        }
    }
}

/// A helper's loop: claim units, spin a while when there are none, park.
fn helper(s: &Shared, index: usize, participants: usize) {
    let mut prefer_for = (0, 0);
    let mut idle_since: Option<Instant> = None;
    let mut polls = 0u32;
    loop {
        if s.stop.load(Ordering::Relaxed) {
            return;
        }
        if s.claimed.load(Ordering::Acquire) != u64::MAX {
            let units = s.units.load(Ordering::Relaxed);
            if prefer_for.0 != units {
                prefer_for = (units, range_bits(index + 1, participants, units.min(64)));
            }
            if let Some(u) = s.claim(prefer_for.1) {
                // SAFETY: just claimed.
                unsafe { s.run_unit(u) };
                s.done.fetch_add(1, Ordering::Release);
                idle_since = None;
                continue;
            }
        }
        let since = *idle_since.get_or_insert_with(Instant::now);
        polls = polls.wrapping_add(1);
        if !polls.is_multiple_of(64) || since.elapsed() < s.spin {
            std::hint::spin_loop();
            continue;
        }
        s.sleeping[index].store(true, Ordering::SeqCst);
        if s.claimed.load(Ordering::SeqCst) == u64::MAX && !s.stop.load(Ordering::SeqCst) {
            std::thread::park();
        }
        s.sleeping[index].store(false, Ordering::Relaxed);
        idle_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_units_once() {
        for units in [2, 3, 8, 63, 64] {
            for n in [1, 2, 3] {
                let all: Vec<u64> = (0..n).map(|t| range_bits(t, n, units)).collect();
                let union = all.iter().fold(0, |a, b| a | b);
                let want = if units == 64 { u64::MAX } else { (1 << units) - 1 };
                assert_eq!(union, want);
                assert_eq!(all.iter().map(|b| b.count_ones()).sum::<u32>() as usize, units);
            }
        }
    }
}
