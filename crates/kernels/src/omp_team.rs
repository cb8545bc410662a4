//! Element-wise work split over libtorch's own OpenMP threads.
//!
//! libtorch runs its CPU kernels on an OpenMP team (GNU libgomp in the PyPI wheels). Between
//! operations its worker threads spin, waiting for the next parallel region, so a thread of
//! difflab's own competes with them for the cores (scoped threads made sampling slower; see
//! docs/performance.md). Opening the parallel region through the same runtime
//! (`GOMP_parallel`, the entry point `#pragma omp parallel` compiles to) hands the work to
//! those spinning threads instead, as `at::parallel_for` does.
//!
//! The runtime is looked up when first needed, among the symbols already loaded into the
//! process (libtorch brings it); where there is none (a libtorch built without OpenMP, or
//! another OS), where only one thread is configured, or when called from inside a parallel
//! region, the work runs on the calling thread. Nothing here changes a result: each element is
//! computed by the same instructions whichever thread takes it.

use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};

/// Elements per thread below which work is not split: libtorch's grain size for element-wise
/// operations (`at::internal::GRAIN_SIZE`), so a tensor goes parallel where libtorch's own
/// kernels would.
pub const GRAIN: usize = 32_768;

/// How many threads [`for_each_chunk`] uses for `len` elements: one per [`GRAIN`] elements, at
/// most the OpenMP team's size, and 1 without an OpenMP runtime or inside a parallel region.
pub fn threads_for(len: usize) -> usize {
    threads_for_grain(len, GRAIN)
}

/// [`threads_for`] with `grain` elements per thread instead of [`GRAIN`] (for kernels that do
/// more per element than an element-wise operation).
pub fn threads_for_grain(len: usize, grain: usize) -> usize {
    match runtime::get() {
        Some(omp) if !omp.in_parallel() => omp.max_threads().min(len / grain.max(1)).max(1),
        _ => 1,
    }
}

/// Run `body` over consecutive ranges that cover `0..len`, each but the last a multiple of
/// `align` elements long (so a vectorised body sees whole vectors), on [`threads_for`]`(len)`
/// threads of libtorch's OpenMP team, the calling thread among them. Returns when every range
/// is done. A panic in `body` is caught on its thread and raised again here.
pub fn for_each_chunk<F: Fn(Range<usize>) + Sync>(len: usize, align: usize, body: F) {
    for_each_chunk_grain(len, align, GRAIN, body);
}

/// [`for_each_chunk`] on [`threads_for_grain`]`(len, grain)` threads.
pub fn for_each_chunk_grain<F: Fn(Range<usize>) + Sync>(
    len: usize,
    align: usize,
    grain: usize,
    body: F,
) {
    let threads = threads_for_grain(len, grain);
    match runtime::get() {
        Some(omp) if threads > 1 => {
            let job = Job {
                body: &body,
                len,
                align: align.max(1),
                omp,
                panicked: AtomicBool::new(false),
            };
            omp.parallel(run_job::<F>, &job as *const Job<'_, F> as *mut _, threads);
            if job.panicked.load(Ordering::Relaxed) {
                panic!("a kernel panicked on an OpenMP thread");
            }
        }
        _ => body(0..len),
    }
}

/// The `index`-th of `parts` consecutive ranges covering `0..len`, each `align`-rounded except
/// the last; empty when there are more parts than work.
pub fn chunk(len: usize, align: usize, index: usize, parts: usize) -> Range<usize> {
    let per = len.div_ceil(parts.max(1)).div_ceil(align) * align;
    let start = (index * per).min(len);
    start..(start + per).min(len)
}

/// A pointer handed to the threads of a parallel region, each of which touches only the
/// elements of its own range.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SyncPtr<T>(pub(crate) *mut T);

// SAFETY: the ranges `for_each_chunk` hands out are disjoint, so as long as each thread keeps
// to its own range (the contract of whoever builds one of these), no element is shared.
unsafe impl<T> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// The pointer (a method, so that a closure captures the whole `Sync` wrapper, not the
    /// bare field).
    pub(crate) fn get(self) -> *mut T {
        self.0
    }

    /// The `range` of the buffer this points into, as a mutable slice.
    ///
    /// # Safety
    /// The buffer holds `range.end` elements, and nothing else reads or writes `range` while
    /// the slice lives.
    pub(crate) unsafe fn slice_mut<'a>(self, range: Range<usize>) -> &'a mut [T] {
        // SAFETY: the caller vouches for the range.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(range.start), range.len()) }
    }

    /// The `range` of the buffer this points into, as a shared slice.
    ///
    /// # Safety
    /// The buffer holds `range.end` elements, and nothing writes `range` while the slice lives.
    pub(crate) unsafe fn slice<'a>(self, range: Range<usize>) -> &'a [T] {
        // SAFETY: the caller vouches for the range.
        unsafe { std::slice::from_raw_parts(self.0.add(range.start), range.len()) }
    }
}

/// What each thread of the team reads.
struct Job<'a, F> {
    body: &'a F,
    len: usize,
    align: usize,
    omp: &'static runtime::OpenMp,
    panicked: AtomicBool,
}

/// The function every thread of the region runs: its own range of the job.
extern "C" fn run_job<F: Fn(Range<usize>) + Sync>(data: *mut std::ffi::c_void) {
    // SAFETY: `for_each_chunk` passes a `Job<F>` that outlives the parallel region.
    let job = unsafe { &*(data as *const Job<'_, F>) };
    let (index, parts) = (job.omp.thread_num(), job.omp.num_threads());
    let range = chunk(job.len, job.align, index, parts);
    if !range.is_empty() && catch_unwind(AssertUnwindSafe(|| (job.body)(range))).is_err() {
        job.panicked.store(true, Ordering::Relaxed);
    }
}

#[cfg(target_os = "linux")]
mod runtime {
    use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
    use std::sync::OnceLock;

    type Region = extern "C" fn(*mut c_void);
    type Parallel = unsafe extern "C" fn(Region, *mut c_void, c_uint, c_uint);
    type Query = unsafe extern "C" fn() -> c_int;

    /// The libgomp entry points, as loaded into this process.
    pub(super) struct OpenMp {
        parallel: Parallel,
        thread_num: Query,
        num_threads: Query,
        max_threads: Query,
        in_parallel: Query,
    }

    unsafe extern "C" {
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    }

    /// The address of an already loaded symbol (`RTLD_DEFAULT`, glibc's null handle).
    fn symbol(name: &CStr) -> Option<*mut c_void> {
        // SAFETY: `dlsym` only reads the name; a null result means "not loaded".
        let ptr = unsafe { dlsym(std::ptr::null_mut(), name.as_ptr()) };
        (!ptr.is_null()).then_some(ptr)
    }

    /// The runtime, looked up once; `None` when the process has none loaded.
    pub(super) fn get() -> Option<&'static OpenMp> {
        static RUNTIME: OnceLock<Option<OpenMp>> = OnceLock::new();
        RUNTIME
            .get_or_init(|| {
                // Make sure libtorch (and with it its OpenMP runtime) is loaded and initialised
                // with its thread count before looking.
                let _ = tch::get_num_threads();
                let parallel = symbol(c"GOMP_parallel")?;
                let thread_num = symbol(c"omp_get_thread_num")?;
                let num_threads = symbol(c"omp_get_num_threads")?;
                let max_threads = symbol(c"omp_get_max_threads")?;
                let in_parallel = symbol(c"omp_in_parallel")?;
                // SAFETY: these are libgomp's documented C entry points with these signatures
                // (`GOMP_parallel` is the GCC ABI of `#pragma omp parallel`, GOMP_4.0).
                unsafe {
                    Some(OpenMp {
                        parallel: std::mem::transmute::<*mut c_void, Parallel>(parallel),
                        thread_num: std::mem::transmute::<*mut c_void, Query>(thread_num),
                        num_threads: std::mem::transmute::<*mut c_void, Query>(num_threads),
                        max_threads: std::mem::transmute::<*mut c_void, Query>(max_threads),
                        in_parallel: std::mem::transmute::<*mut c_void, Query>(in_parallel),
                    })
                }
            })
            .as_ref()
    }

    impl OpenMp {
        /// Run `region(data)` on `threads` threads of the team (the caller is thread 0).
        pub(super) fn parallel(&self, region: Region, data: *mut c_void, threads: usize) {
            let threads = c_uint::try_from(threads).unwrap_or(c_uint::MAX);
            // SAFETY: `region` does not unwind (it catches panics) and `data` outlives the
            // call, which returns only when every thread has finished.
            unsafe { (self.parallel)(region, data, threads, 0) }
        }

        /// This thread's number in the current team.
        pub(super) fn thread_num(&self) -> usize {
            // SAFETY: a plain query of the runtime.
            usize::try_from(unsafe { (self.thread_num)() }).unwrap_or(0)
        }

        /// The size of the current team.
        pub(super) fn num_threads(&self) -> usize {
            // SAFETY: a plain query of the runtime.
            usize::try_from(unsafe { (self.num_threads)() })
                .unwrap_or(1)
                .max(1)
        }

        /// The team size a new parallel region gets (libtorch's `set_num_threads`).
        pub(super) fn max_threads(&self) -> usize {
            // SAFETY: a plain query of the runtime.
            usize::try_from(unsafe { (self.max_threads)() })
                .unwrap_or(1)
                .max(1)
        }

        /// Whether the calling thread is inside a parallel region already.
        pub(super) fn in_parallel(&self) -> bool {
            // SAFETY: a plain query of the runtime.
            unsafe { (self.in_parallel)() != 0 }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod runtime {
    use std::ffi::c_void;

    /// No OpenMP runtime is looked up off Linux: everything runs on the calling thread.
    pub(super) enum OpenMp {}

    pub(super) fn get() -> Option<&'static OpenMp> {
        None
    }

    impl OpenMp {
        pub(super) fn parallel(&self, _: extern "C" fn(*mut c_void), _: *mut c_void, _: usize) {
            match *self {}
        }
        pub(super) fn thread_num(&self) -> usize {
            match *self {}
        }
        pub(super) fn num_threads(&self) -> usize {
            match *self {}
        }
        pub(super) fn max_threads(&self) -> usize {
            match *self {}
        }
        pub(super) fn in_parallel(&self) -> bool {
            match *self {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn chunks_cover_the_range_once_in_aligned_pieces() {
        for len in [0, 1, 15, 16, 17, 100_003, 65_536] {
            for parts in 1..=5 {
                let mut next = 0;
                for index in 0..parts {
                    let r = chunk(len, 16, index, parts);
                    assert_eq!(r.start, next.min(len), "len {len}, parts {parts}");
                    if r.end < len && !r.is_empty() {
                        assert_eq!(r.len() % 16, 0, "len {len}, parts {parts}, {r:?}");
                    }
                    next = r.end.max(next);
                }
                assert_eq!(next, len, "len {len}, parts {parts}");
            }
        }
    }

    #[test]
    fn every_element_is_visited_exactly_once() {
        let len = 4 * GRAIN + 5;
        let visits: Vec<AtomicUsize> = (0..len).map(|_| AtomicUsize::new(0)).collect();
        let ranges = Mutex::new(Vec::new());
        for_each_chunk(len, 16, |r| {
            ranges.lock().unwrap().push(r.clone());
            for i in r {
                visits[i].fetch_add(1, Ordering::Relaxed);
            }
        });
        assert!(visits.iter().all(|v| v.load(Ordering::Relaxed) == 1));
        let ranges = ranges.into_inner().unwrap();
        assert_eq!(ranges.len(), threads_for(len));
    }

    #[test]
    fn small_work_stays_on_the_calling_thread() {
        assert_eq!(threads_for(GRAIN - 1), 1);
        let caller = std::thread::current().id();
        for_each_chunk(GRAIN - 1, 16, |r| {
            assert_eq!(r, 0..GRAIN - 1);
            assert_eq!(std::thread::current().id(), caller);
        });
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_team_is_libtorchs_own() {
        // libtorch's wheels bring GNU OpenMP; its team size is libtorch's thread count.
        let omp = runtime::get().expect("libtorch's OpenMP runtime is loaded");
        assert_eq!(omp.max_threads(), tch::get_num_threads() as usize);
        if omp.max_threads() > 1 {
            assert_eq!(threads_for(2 * GRAIN), 2);
            let threads = Mutex::new(Vec::new());
            for_each_chunk(2 * GRAIN, 16, |_| {
                threads.lock().unwrap().push(std::thread::current().id())
            });
            let threads = threads.into_inner().unwrap();
            assert_eq!(threads.len(), 2);
            assert_ne!(threads[0], threads[1], "the two halves ran on two threads");
        }
    }

    #[test]
    fn a_panic_on_a_worker_reaches_the_caller() {
        let result = catch_unwind(|| {
            for_each_chunk(4 * GRAIN, 16, |r| {
                if r.end == 4 * GRAIN {
                    panic!("last chunk");
                }
            })
        });
        assert!(result.is_err());
    }
}
