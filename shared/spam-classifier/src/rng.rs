//! A tiny deterministic random number generator (SplitMix64), so that training and fold assignment give the
//! same result on every run and every platform without depending on `rand`'s reproducibility policy.

/// SplitMix64 (Steele, Lea, Flood 2014): a 64-bit state advanced by a Weyl sequence and mixed.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`), by multiply-shift; the bias is below 2^-32 for the sizes used here.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Fisher-Yates shuffle.
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Assigns each example to one of `k` folds, stratified by label: each class is shuffled with `seed` and dealt
/// round-robin, so every fold gets (within one) the same number of each class.
pub(crate) fn stratified_folds(labels: &[bool], k: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed);
    let mut fold = vec![0; labels.len()];
    let mut next = 0;
    for class in [false, true] {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        rng.shuffle(&mut members);
        for i in members {
            fold[i] = next % k;
            next += 1;
        }
    }
    fold
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(SplitMix64::new(7).next_u64(), SplitMix64::new(8).next_u64());
    }

    #[test]
    fn folds_are_stratified() {
        let labels: Vec<bool> = (0..103).map(|i| i % 10 == 0).collect();
        let folds = stratified_folds(&labels, 5, 1);
        for f in 0..5 {
            let spam = (0..labels.len())
                .filter(|&i| folds[i] == f && labels[i])
                .count();
            let ham = (0..labels.len())
                .filter(|&i| folds[i] == f && !labels[i])
                .count();
            assert!((2..=3).contains(&spam), "fold {f} has {spam} spam");
            assert!((18..=19).contains(&ham), "fold {f} has {ham} ham");
        }
    }
}
