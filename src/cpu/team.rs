//! A small persistent thread team for the CPU kernels: `run(f)` calls
//! `f(part)` for every `part` in `0..parts`, on the calling thread and on
//! helpers that spin for a while after their last part before they park.
//!
//! Why not rayon: a training step at batch 64 runs two products of about
//! 0.2 ms each with serial work between them; rayon's workers fall asleep
//! in the gaps, and waking them through the OS costs a noticeable share of
//! the step. A helper that spins through the gaps starts at once.
//!
//! Parts are claimed, not assigned: whoever comes first computes a part,
//! so a late helper (descheduled, or parked) never makes the caller wait
//! for work it could do itself. Every part is computed exactly once.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long a helper spins after its last part before it parks.
const SPIN: Duration = Duration::from_millis(2);

/// A job: a borrowed closure, its lifetime erased (see [`Team::run`]).
type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// High 32 bits: job generation; low 32 bits: next unclaimed part.
    /// Claiming is a compare-and-swap on the whole word, so a helper that
    /// read an old generation cannot claim a part of a newer job by mistake.
    state: AtomicU64,
    /// Parts of the current job not yet finished.
    remaining: AtomicUsize,
    parts: usize,
    job: UnsafeCell<Option<Job>>,
    sleeping: Vec<AtomicBool>,
    stop: AtomicBool,
}

// SAFETY: `job` is written only by the owner inside `run`, while no part of
// any job can be claimed (the low half of `state` is at `parts`); helpers
// read it only after claiming a part, which acquires the release store that
// published it, and `run` does not return (so the closure stays alive) until
// every claimed part is finished.
unsafe impl Sync for Shared {}
// SAFETY: as above; nothing in it is tied to a thread.
unsafe impl Send for Shared {}

impl Shared {
    /// Claim the next part of the current job, if any is left.
    fn claim(&self) -> Option<usize> {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            let next = (s & 0xffff_ffff) as usize;
            if next >= self.parts {
                return None;
            }
            match self
                .state
                .compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(next),
                Err(now) => s = now,
            }
        }
    }

    /// Run claimed part `p` and mark it finished.
    ///
    /// # Safety
    /// `p` was claimed from the current job and is not finished.
    unsafe fn run_part(&self, p: usize) {
        // SAFETY: see `unsafe impl Sync`: the job is published and alive.
        let job = unsafe { (*self.job.get()).expect("a claimed part has a job") };
        // SAFETY: the closure outlives every claimed part (`run` waits).
        unsafe { (*job)(p) };
        self.remaining.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The caller plus `parts - 1` helper threads.
pub struct Team {
    shared: Arc<Shared>,
    helpers: Vec<Thread>,
}

impl Team {
    /// A team that splits every job into `parts` parts (at least 1).
    pub fn new(parts: usize) -> Self {
        let parts = parts.max(1);
        let shared = Arc::new(Shared {
            state: AtomicU64::new(parts as u64),
            remaining: AtomicUsize::new(0),
            parts,
            job: UnsafeCell::new(None),
            sleeping: (1..parts).map(|_| AtomicBool::new(false)).collect(),
            stop: AtomicBool::new(false),
        });
        let helpers = (1..parts)
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("wgtrain-cpu-{i}"))
                    .spawn(move || helper(&s, i - 1))
                    .expect("spawning a CPU worker thread")
                    .thread()
                    .clone()
            })
            .collect();
        Team { shared, helpers }
    }

    pub fn parts(&self) -> usize {
        self.shared.parts
    }

    /// Call `f(p)` for every `p` in `0..parts()`, each exactly once, on this
    /// thread and the helpers; returns when all are done.
    pub fn run(&mut self, f: &(dyn Fn(usize) + Sync)) {
        let sh = &*self.shared;
        // SAFETY: no part can be claimed now (the previous `run` finished
        // every part and left the low half of `state` at `parts`), so no
        // helper reads `job` while it is written. The lifetime is erased;
        // `run` waits below until every part has finished with `f`.
        unsafe { *sh.job.get() = Some(std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f)) };
        sh.remaining.store(sh.parts, Ordering::Relaxed);
        let gen = (sh.state.load(Ordering::Relaxed) >> 32) + 1;
        // SeqCst, with the `sleeping` loads below: either a helper about to
        // park sees this job, or we see its flag and unpark it.
        sh.state.store(gen << 32, Ordering::SeqCst);
        for (i, t) in self.helpers.iter().enumerate() {
            if sh.sleeping[i].load(Ordering::SeqCst) {
                t.unpark();
            }
        }
        while let Some(p) = sh.claim() {
            // SAFETY: just claimed from the current job.
            unsafe { sh.run_part(p) };
        }
        while sh.remaining.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        // SAFETY: every part is finished and none can be claimed.
        unsafe { *sh.job.get() = None };
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for t in &self.helpers {
            t.unpark();
        }
    }
}

fn helper(sh: &Shared, me: usize) {
    let mut last = Instant::now();
    let mut spins = 0u32;
    loop {
        if sh.stop.load(Ordering::Acquire) {
            return;
        }
        if let Some(p) = sh.claim() {
            // SAFETY: just claimed from the current job.
            unsafe { sh.run_part(p) };
            last = Instant::now();
            continue;
        }
        // Read the clock only now and then: it costs more than a spin.
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(256) || last.elapsed() < SPIN {
            std::hint::spin_loop();
            continue;
        }
        // Announce the park, then look once more, so a job published in
        // between is not missed (its publisher unparks us after seeing the
        // flag, or we see the job here).
        sh.sleeping[me].store(true, Ordering::SeqCst);
        let pending = (sh.state.load(Ordering::SeqCst) & 0xffff_ffff) < sh.parts as u64;
        if !pending && !sh.stop.load(Ordering::Acquire) {
            std::thread::park_timeout(Duration::from_millis(100));
        }
        sh.sleeping[me].store(false, Ordering::SeqCst);
        last = Instant::now();
    }
}

/// The process-wide team of the CPU kernels, sized by `threads()` when first
/// used.
pub(crate) fn global() -> &'static Mutex<Team> {
    static TEAM: OnceLock<Mutex<Team>> = OnceLock::new();
    TEAM.get_or_init(|| Mutex::new(Team::new(super::kernels::threads())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_exactly_once_across_many_jobs() {
        let mut team = Team::new(3);
        let counts: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..2000 {
            team.run(&|p| {
                counts[p].fetch_add(1, Ordering::Relaxed);
            });
        }
        for c in &counts {
            assert_eq!(c.load(Ordering::Relaxed), 2000);
        }
    }
}
