//! The CPU's thread team, one type for training and inference: `run(units,
//! f)` calls `f(u)` for every `u` in `0..units`, each exactly once, on the
//! calling thread and on helper threads that spin for a while after their
//! last unit before they park.
//!
//! Why not rayon: a training step at batch 64 runs two products of about
//! 0.2 ms each with serial work between them, and a batch-1 forward pass
//! of 784-500-10 takes microseconds; a pool whose workers fall asleep in
//! the gaps pays an OS wake-up, about as long as the work, every time. A
//! helper that spins through the gaps starts at once; one that has been
//! idle longer than its spin parks, so an idle team costs nothing.
//!
//! Units are claimed from a bitmask, not assigned: whoever comes first
//! computes a unit, so a late helper (descheduled on a busy machine, or
//! parked) never makes the caller wait for work it could do itself. Each
//! participant prefers its own contiguous range of units, so a steady
//! stream of calls keeps every core on the same slice of the data (for
//! inference, the same panels of the weights in its own cache). Which
//! thread computes a unit never changes the unit's result.
//!
//! A team is owned by what uses it (a CPU backend, a predictor) and sized
//! when it is made; the kernels that split their work find the team of
//! the current thread through [`Team::install`], and run serially when
//! there is none.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// At most this many units per call (one bit each), and so at most this
/// many participants.
pub const MAX_UNITS: usize = 64;

/// How long a training team's helpers spin after their last unit: longer
/// than the serial gaps inside a training step.
pub const TRAIN_SPIN: Duration = Duration::from_millis(2);

/// A job: a borrowed closure, its lifetime erased (see [`Team::run`]).
type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Bit `u` set: unit `u` of the current job is taken, or does not
    /// exist. All ones: there is no job.
    claimed: AtomicU64,
    /// Units of the current job finished by the helpers.
    done: AtomicUsize,
    /// Units of the current job, for the helpers' preferred ranges only (a
    /// stale value costs cache locality, never correctness).
    units: AtomicUsize,
    /// Per helper: it is parked or about to park, and needs an unpark.
    sleeping: Vec<AtomicBool>,
    stop: AtomicBool,
    spin: Duration,
    job: UnsafeCell<Option<Job>>,
}

// SAFETY: `job` is written only by the team's owner inside `run`, while
// `claimed` is all ones and every claimed unit is done (no helper can claim
// a unit, and a helper reads `job` only after claiming one); a helper's
// successful compare-and-swap on `claimed` acquires the owner's release
// store that published the job, and `run` does not return (so the closure
// stays alive) until every claimed unit is done.
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

    /// Run unit `u` of the current job.
    ///
    /// # Safety
    /// The caller claimed `u` in the current job and has not finished it.
    unsafe fn run_unit(&self, u: usize) {
        // SAFETY: see `unsafe impl Sync`: the job is published and alive.
        let job = unsafe { *self.job.get() };
        if let Some(job) = job {
            // SAFETY: the closure outlives every claimed unit (`run` waits).
            unsafe { (*job)(u) };
        }
    }
}

/// The bits of units `t * units / n..(t + 1) * units / n`: participant
/// `t`'s preferred range among `n`.
fn range_bits(t: usize, n: usize, units: usize) -> u64 {
    let (a, b) = (t * units / n, (t + 1) * units / n);
    let ones = |k: usize| if k >= 64 { u64::MAX } else { (1u64 << k) - 1 };
    ones(b) & !ones(a)
}

/// The caller plus up to `MAX_UNITS - 1` helper threads.
pub struct Team {
    shared: Arc<Shared>,
    threads: Vec<Thread>,
    handles: Vec<JoinHandle<()>>,
}

impl Default for Team {
    /// A team of one: every call runs on the caller.
    fn default() -> Self {
        Team::new(1, Duration::ZERO)
    }
}

thread_local! {
    /// The team installed on this thread (see [`Team::install`]).
    static CURRENT: Cell<*mut Team> = const { Cell::new(std::ptr::null_mut()) };
}

impl Team {
    /// Start `threads - 1` helpers (`threads` 0: one per core; at most
    /// [`MAX_UNITS`] in all) that spin for `spin` after their last unit
    /// before they park. With one thread there are none and every call
    /// runs on the caller. A helper that cannot be started only means less
    /// parallelism.
    pub fn new(threads: usize, spin: Duration) -> Self {
        let threads = team_size(threads);
        let helpers = threads.saturating_sub(1);
        let shared = Arc::new(Shared {
            claimed: AtomicU64::new(u64::MAX),
            done: AtomicUsize::new(0),
            units: AtomicUsize::new(0),
            sleeping: (0..helpers).map(|_| AtomicBool::new(false)).collect(),
            stop: AtomicBool::new(false),
            spin,
            job: UnsafeCell::new(None),
        });
        let mut handles = Vec::with_capacity(helpers);
        for h in 0..helpers {
            let s = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("wgtrain-cpu-{}", h + 1))
                .spawn(move || helper(&s, h, helpers + 1));
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    log::warn!("cannot start a CPU helper thread: {e}");
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

    /// Call `f(u)` for every `u` in `0..units` (at most [`MAX_UNITS`];
    /// more are run as `MAX_UNITS` units of consecutive indices), each
    /// exactly once, on this thread and the helpers; returns when all are
    /// done.
    pub fn run(&mut self, units: usize, f: &(dyn Fn(usize) + Sync)) {
        if units > MAX_UNITS {
            let per = units.div_ceil(MAX_UNITS);
            return self.run(units.div_ceil(per), &|g| {
                for u in g * per..units.min((g + 1) * per) {
                    f(u)
                }
            });
        }
        if self.handles.is_empty() || units < 2 {
            return (0..units).for_each(f);
        }
        let s = &*self.shared;
        // SAFETY: `claimed` is all ones and the previous job's units are
        // all done (this method waits for them), so no helper reads `job`.
        // The lifetime is erased; this method waits below until every unit
        // has finished with `f`.
        unsafe { *s.job.get() = Some(std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f)) };
        s.done.store(0, Ordering::Relaxed);
        s.units.store(units, Ordering::Relaxed);
        let absent = if units >= 64 { 0 } else { u64::MAX << units };
        // SeqCst, with the `sleeping` loads below: either a helper about to
        // park sees this job, or we see its flag and unpark it.
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
        // SAFETY: every unit is done and none can be claimed.
        unsafe { *s.job.get() = None };
    }

    /// Run `f` with this team installed on the current thread, so that
    /// [`with_current`] inside it (the CPU kernels' parallel products) uses
    /// it; the previous one, if any, is restored after.
    pub fn install<R>(&mut self, f: impl FnOnce() -> R) -> R {
        struct Restore(*mut Team);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(self as *mut Team)));
        f()
    }
}

/// Call `f` with the team installed on this thread, or with `None` when
/// there is none (or it is already running a job further up the stack:
/// nested work runs serially).
pub fn with_current<R>(f: impl FnOnce(Option<&mut Team>) -> R) -> R {
    let team = CURRENT.with(|c| c.replace(std::ptr::null_mut()));
    struct Restore(*mut Team);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(team);
    // SAFETY: `install` holds the team's unique borrow for as long as the
    // pointer is set on this thread, and the pointer is taken out of
    // `CURRENT` while `f` uses it, so no second `&mut` can be made from it.
    f(unsafe { team.as_mut() })
}

/// Threads of the team installed on this thread (1 without one).
pub fn current_size() -> usize {
    with_current(|t| t.map_or(1, |t| t.size()))
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
        // Read the clock only now and then: it costs more than a spin.
        polls = polls.wrapping_add(1);
        if !polls.is_multiple_of(64) || since.elapsed() < s.spin {
            std::hint::spin_loop();
            continue;
        }
        // Announce the park, then look once more, so a job published in
        // between is not missed (its publisher unparks us after seeing the
        // flag, or we see the job here).
        s.sleeping[index].store(true, Ordering::SeqCst);
        if s.claimed.load(Ordering::SeqCst) == u64::MAX && !s.stop.load(Ordering::SeqCst) {
            std::thread::park();
        }
        s.sleeping[index].store(false, Ordering::Relaxed);
        idle_since = None;
    }
}

/// The threads of a team made for `threads` (0: one per core), at most
/// [`MAX_UNITS`].
pub fn team_size(threads: usize) -> usize {
    if threads == 0 { cores() } else { threads }.min(MAX_UNITS)
}

/// The CPU as every benchmark line and backend names it, for a team of
/// `threads` (0: one per core): `cpu (2 threads)`.
pub fn device_name(threads: usize) -> String {
    format!("cpu ({} threads)", team_size(threads))
}

/// The cores this process may run on, asked once: on Linux
/// `available_parallelism` reads the affinity mask and the cgroup quota
/// files, about 30 microseconds a call.
pub fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_runs_exactly_once_across_many_jobs() {
        let mut team = Team::new(3, TRAIN_SPIN);
        for units in [1, 2, 3, 7, 64, 130] {
            let counts: Vec<AtomicUsize> = (0..units).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..500 {
                team.run(units, &|u| {
                    counts[u].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 500), "{units} units");
        }
    }

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

    #[test]
    fn install_is_scoped_and_nested_work_runs_serially() {
        assert!(with_current(|t| t.is_none()));
        let mut team = Team::new(2, TRAIN_SPIN);
        team.install(|| {
            with_current(|t| {
                assert_eq!(t.map(|t| t.size()), Some(2));
                // Inside a team's job the team is not installed again.
                assert!(with_current(|inner| inner.is_none()));
            });
            assert!(with_current(|t| t.is_some()));
        });
        assert!(with_current(|t| t.is_none()));
    }
}
