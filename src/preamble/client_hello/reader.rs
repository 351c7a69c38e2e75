//! A cursor over a byte slice whose every read is bounds-checked: a length
//! that runs past the end is an error naming the field, never a panic.

use super::HelloError;

/// Reads big-endian fields from a slice.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    /// Whether nothing is left.
    pub(super) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The next `n` bytes.
    pub(super) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        let Some((taken, rest)) = self.bytes.split_at_checked(n) else {
            return Err(HelloError::Malformed(what));
        };
        self.bytes = rest;
        Ok(taken)
    }

    /// The next `N` bytes, as an array.
    pub(super) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], HelloError> {
        let Some((taken, rest)) = self.bytes.split_first_chunk::<N>() else {
            return Err(HelloError::Malformed(what));
        };
        self.bytes = rest;
        Ok(*taken)
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        let [b] = self.array(what)?;
        Ok(b)
    }

    pub(super) fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    /// A field behind a one-byte length.
    pub(super) fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }

    /// A field behind a two-byte length.
    pub(super) fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }
}
