//! Where packed weights live: large mappings that ask the kernel for transparent huge pages,
//! each matrix a region of one of them, handed out in load order.
//!
//! A decode step streams every weight once. On 4 KiB pages that is one TLB entry per 4 KiB, and
//! the matrices (a few hundred KiB each on small models) came from their own small mappings,
//! which never get huge pages. With 2 MiB pages SmolLM2 decodes about 7 % faster, and two
//! processes holding the same model no longer differ by 5 % depending on where their pages
//! landed. Where the kernel gives no huge pages (`never`, or not Linux) the regions simply sit
//! on ordinary pages.
//!
//! Regions are handed out one after another, so matrices packed in a row (q, k and v; gate and
//! up) are adjacent and are stacked without a copy ([`Region::join`]).
use std::sync::{Arc, Mutex, Weak};

/// Size of a mapping the regions are cut from (one larger matrix gets its own).
const CHUNK: usize = 32 << 20;
/// Huge page size the mappings are aligned to.
const HUGE: usize = 2 << 20;
/// Alignment of each region (a cache line: the kernel's 512-bit loads stay within one).
const ALIGN: usize = 64;

/// One anonymous mapping, unmapped when its last region is dropped.
struct Chunk {
    /// What `mmap` returned, and its length (for `munmap`).
    map: *mut u8,
    map_len: usize,
    /// The usable part: `base..base + len`, aligned to [`HUGE`].
    base: *mut u8,
    len: usize,
}

// SAFETY: a chunk is plain memory; regions never overlap, and a region is written only by its
// owner before it is shared (`&mut` access goes through `Region`'s `DerefMut`).
unsafe impl Send for Chunk {}
unsafe impl Sync for Chunk {}

impl Chunk {
    fn new(len: usize) -> std::io::Result<Self> {
        let map_len = len + HUGE;
        // SAFETY: an anonymous private mapping; the result is checked.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let map = map as *mut u8;
        let base = map.wrapping_add(map.align_offset(HUGE));
        #[cfg(target_os = "linux")]
        // SAFETY: `base..base + len` lies inside the mapping. Advice only: a kernel that gives no
        // huge pages leaves the range as it is.
        unsafe {
            libc::madvise(base as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        Ok(Self {
            map,
            map_len,
            base,
            len,
        })
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once (no region refers to it any more).
        unsafe {
            libc::munmap(self.map as *mut libc::c_void, self.map_len);
        }
    }
}

/// A matrix's bytes: `len` bytes at `start` of a chunk, zeroed when handed out.
pub(super) struct Region {
    chunk: Arc<Chunk>,
    start: usize,
    len: usize,
}

/// Hands out regions: the chunk they are being cut from, and how much of it is used. Held
/// weakly: when every region of it is gone (a model unloaded), so is the mapping.
pub(super) struct Arena(Mutex<Option<(Weak<Chunk>, usize)>>);

/// The process's arena.
pub(super) static ARENA: Arena = Arena(Mutex::new(None));

impl Arena {
    /// `len` zeroed bytes, after the previous region where it fits.
    pub(super) fn region(&self, len: usize) -> std::io::Result<Region> {
        let mut current = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((weak, used)) = current.as_mut() {
            if let Some(chunk) = weak.upgrade() {
                let start = used.next_multiple_of(ALIGN);
                if start + len <= chunk.len {
                    *used = start + len;
                    return Ok(Region { chunk, start, len });
                }
            }
        }
        let chunk = Arc::new(Chunk::new(len.max(CHUNK).next_multiple_of(HUGE))?);
        *current = Some((Arc::downgrade(&chunk), len));
        Ok(Region {
            chunk,
            start: 0,
            len,
        })
    }
}

impl Region {
    /// `parts` as one region when each follows the previous one in the same chunk (regions made
    /// one after another), without copying.
    pub(super) fn join(parts: &[&Region]) -> Option<Region> {
        let first = parts.first()?;
        let mut end = first.start + first.len;
        for p in &parts[1..] {
            if !Arc::ptr_eq(&p.chunk, &first.chunk) || p.start != end {
                return None;
            }
            end += p.len;
        }
        Some(Region {
            chunk: first.chunk.clone(),
            start: first.start,
            len: end - first.start,
        })
    }
}

impl std::ops::Deref for Region {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `start + len <= chunk.len`, inside the live mapping.
        unsafe { std::slice::from_raw_parts(self.chunk.base.add(self.start), self.len) }
    }
}

impl std::ops::DerefMut for Region {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; regions cut from one chunk never overlap, and a joined region is
        // only read (`Packed` writes its region while packing, before `join`).
        unsafe { std::slice::from_raw_parts_mut(self.chunk.base.add(self.start), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_follow_each_other_and_join_without_a_copy() {
        let arena = Arena(Mutex::new(None));
        let mut a = arena.region(4096).unwrap();
        let mut b = arena.region(640).unwrap();
        assert!(a.iter().all(|&x| x == 0) && b.iter().all(|&x| x == 0));
        a[4095] = 7;
        b[0] = 9;
        let ab = Region::join(&[&a, &b]).expect("adjacent");
        assert_eq!((ab.len(), ab[4095], ab[4096]), (4736, 7, 9));
        // Not in order, or not adjacent: no join.
        assert!(Region::join(&[&b, &a]).is_none());
        let c = arena.region(100).unwrap();
        let _d = arena.region(64).unwrap();
        let e = arena.region(64).unwrap();
        assert!(Region::join(&[&c, &e]).is_none());
        // The next region starts on a cache line.
        assert_eq!(e.as_ptr() as usize % ALIGN, 0);
    }

    #[test]
    fn a_region_larger_than_a_chunk_gets_its_own() {
        let arena = Arena(Mutex::new(None));
        let small = arena.region(10).unwrap();
        let big = arena.region(CHUNK + 1).unwrap();
        assert_eq!(big.len(), CHUNK + 1);
        assert_eq!(big.as_ptr() as usize % HUGE, 0, "aligned to huge pages");
        assert!(!Arc::ptr_eq(&small.chunk, &big.chunk));
    }
}
