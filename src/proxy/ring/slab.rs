//! A slab: values stored at stable indices, freed slots reused. Op ids,
//! task ids and timer ids are indices here, so a completion finds its op
//! without hashing.

/// Values at stable indices; a freed index is handed out again.
#[derive(Debug)]
pub(super) struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Slab<T> {
    /// An empty slab.
    pub fn new() -> Slab<T> {
        Slab {
            entries: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Stores `value`; returns its index.
    pub fn insert(&mut self, value: T) -> usize {
        match self.free.pop() {
            Some(index) => {
                self.entries[index] = Some(value);
                index
            }
            None => {
                self.entries.push(Some(value));
                self.entries.len() - 1
            }
        }
    }

    /// The value at `index`, if one is stored there.
    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.entries.get_mut(index).and_then(Option::as_mut)
    }

    /// Takes the value at `index` out, freeing the index.
    pub fn remove(&mut self, index: usize) -> Option<T> {
        let value = self.entries.get_mut(index)?.take()?;
        self.free.push(index);
        Some(value)
    }

    /// How many values are stored.
    pub fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// Takes every value out.
    pub fn drain(&mut self) -> Vec<T> {
        self.free.clear();
        self.entries.drain(..).flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_reuse_freed_indices_and_keep_the_others_stable() {
        let mut slab = Slab::new();
        let (a, b, c) = (slab.insert('a'), slab.insert('b'), slab.insert('c'));
        assert_eq!(slab.remove(b), Some('b'));
        assert_eq!(slab.remove(b), None);
        assert_eq!(slab.len(), 2);
        let d = slab.insert('d');
        assert_eq!(d, b);
        assert_eq!(slab.get_mut(a), Some(&mut 'a'));
        assert_eq!(slab.get_mut(c), Some(&mut 'c'));
        let mut all = slab.drain();
        all.sort();
        assert_eq!(all, vec!['a', 'c', 'd']);
        assert_eq!(slab.len(), 0);
    }
}
