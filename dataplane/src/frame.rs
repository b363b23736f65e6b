//! A frame inside a fixed buffer (a UMEM chunk, or a `Vec` in tests) with headroom in front,
//! so that encapsulation grows into the headroom instead of moving the payload, and
//! decapsulation just advances the start.

/// A view of one frame: the bytes `buf[start..start + len]`, with `buf[..start]` free
/// headroom and `buf[start + len..]` free tailroom.
#[derive(Debug)]
pub struct Frame<'a> {
    buf: &'a mut [u8],
    start: usize,
    len: usize,
}

impl<'a> Frame<'a> {
    /// Wraps `buf`, the frame starting at `start` and `len` long. Out-of-range values are
    /// clamped to the buffer so that a bad descriptor cannot make a later access panic.
    #[inline]
    pub fn new(buf: &'a mut [u8], start: usize, len: usize) -> Self {
        let start = start.min(buf.len());
        let len = len.min(buf.len() - start);
        Frame { buf, start, len }
    }

    // Every stage asks for the frame's bytes, several times per frame: without an indexed
    // slice's range checks (the invariant below makes them redundant) that is one add.
    #[inline]
    #[allow(unsafe_code)]
    pub fn data(&self) -> &[u8] {
        // SAFETY: `start + len <= buf.len()` always holds: `new` clamps both, and every
        // method that moves `start` or changes `len` keeps it (checked before it changes).
        unsafe { self.buf.get_unchecked(self.start..self.start + self.len) }
    }

    #[inline]
    #[allow(unsafe_code)]
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `data`.
        unsafe {
            self.buf
                .get_unchecked_mut(self.start..self.start + self.len)
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of the first byte of the frame in the buffer (the headroom in use before it).
    #[inline]
    pub fn start(&self) -> usize {
        self.start
    }

    #[inline]
    pub fn headroom(&self) -> usize {
        self.start
    }

    #[inline]
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.start - self.len
    }

    /// Grows the frame by `n` bytes at the front (into the headroom). The new bytes hold
    /// whatever the buffer held; the caller writes the new header. False if not enough room.
    #[inline]
    #[must_use]
    pub fn push_front(&mut self, n: usize) -> bool {
        if n > self.start {
            return false;
        }
        self.start -= n;
        self.len += n;
        true
    }

    /// Removes `n` bytes from the front (a decapsulated or popped header).
    #[inline]
    #[must_use]
    pub fn pull_front(&mut self, n: usize) -> bool {
        if n > self.len {
            return false;
        }
        self.start += n;
        self.len -= n;
        true
    }

    /// Sets the length, growing into the tailroom or truncating.
    #[inline]
    #[must_use]
    pub fn set_len(&mut self, len: usize) -> bool {
        if self.start + len > self.buf.len() {
            return false;
        }
        self.len = len;
        true
    }

    /// Moves the first `n` bytes of the frame `by` bytes towards the front, growing the frame
    /// by `by` at offset `n`: how a 4-byte 802.1Q tag is inserted after the MAC addresses
    /// without touching the payload (only the 12 MAC bytes move).
    #[inline]
    #[must_use]
    pub fn insert_gap(&mut self, at: usize, by: usize) -> bool {
        if at > self.len || !self.push_front(by) {
            return false;
        }
        self.buf
            .copy_within(self.start + by..self.start + by + at, self.start);
        true
    }

    /// The inverse of [`Frame::insert_gap`]: removes `by` bytes at offset `at` by moving the
    /// first `at` bytes towards the back.
    #[inline]
    #[must_use]
    pub fn remove_gap(&mut self, at: usize, by: usize) -> bool {
        if at.checked_add(by).is_none_or(|end| end > self.len) {
            return false;
        }
        self.buf
            .copy_within(self.start..self.start + at, self.start + by);
        self.start += by;
        self.len -= by;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_and_pull_stay_in_bounds() {
        let mut buf = vec![0u8; 64];
        let mut f = Frame::new(&mut buf, 16, 10);
        assert!(f.push_front(16));
        assert!(!f.push_front(1));
        assert_eq!(f.len(), 26);
        assert!(f.pull_front(26));
        assert!(!f.pull_front(1));
        assert!(f.set_len(38));
        assert!(!f.set_len(39));
    }

    #[test]
    fn new_clamps_bad_descriptors() {
        let mut buf = vec![0u8; 8];
        let f = Frame::new(&mut buf, 100, 100);
        assert_eq!(f.len(), 0);
        let mut buf = vec![0u8; 8];
        let f = Frame::new(&mut buf, 4, 100);
        assert_eq!(f.len(), 4);
    }

    #[test]
    fn gap_insert_then_remove_is_identity() {
        let mut buf: Vec<u8> = (0..64).collect();
        let orig = buf[8..40].to_vec();
        let mut f = Frame::new(&mut buf, 8, 32);
        assert!(f.insert_gap(12, 4));
        assert_eq!(f.len(), 36);
        assert_eq!(&f.data()[..12], &orig[..12]);
        assert_eq!(&f.data()[16..], &orig[12..]);
        assert!(f.remove_gap(12, 4));
        assert_eq!(f.data(), &orig[..]);
        assert!(!f.remove_gap(30, 4));
    }
}
