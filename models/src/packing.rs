//! Best-Fit-Decreasing packing of sequences into bins of at most `capacity` tokens.

use std::collections::BTreeMap;

/// Packs sequences of the given lengths into bins holding at most `capacity` tokens each, by
/// Best-Fit-Decreasing: longest first, each into the fullest bin it still fits, a new bin when
/// none has room. A sequence longer than `capacity` gets a bin of its own. Returns the indices
/// of the sequences of each bin, each bin in input order (so a bin reads like its sequences
/// did), bins in the order they were opened. Deterministic: equal lengths keep input order,
/// and of equally full bins the first opened is taken. O(n log n).
pub fn best_fit_decreasing(lengths: &[usize], capacity: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
    let mut bins: Vec<Vec<usize>> = vec![];
    // Open bins by remaining room, then by when they were opened.
    let mut by_room: BTreeMap<(usize, usize), ()> = BTreeMap::new();
    for i in order {
        let len = lengths[i];
        let best = by_room.range((len, 0)..).next().map(|(&key, _)| key);
        match best {
            Some((room, bin)) => {
                by_room.remove(&(room, bin));
                bins[bin].push(i);
                if room > len {
                    by_room.insert((room - len, bin), ());
                }
            }
            None => {
                bins.push(vec![i]);
                if capacity > len {
                    by_room.insert((capacity - len, bins.len() - 1), ());
                }
            }
        }
    }
    for bin in &mut bins {
        bin.sort_unstable();
    }
    bins
}

#[cfg(test)]
mod tests {
    use super::best_fit_decreasing;

    #[test]
    fn every_sequence_lands_once_and_bins_respect_capacity() {
        let lengths = [5, 9, 1, 7, 3, 3, 12, 4, 8, 2];
        let bins = best_fit_decreasing(&lengths, 12);
        let mut seen: Vec<usize> = bins.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for bin in &bins {
            assert!(bin.iter().map(|&i| lengths[i]).sum::<usize>() <= 12);
        }
        // 54 tokens need at least 5 bins of 12; BFD finds 5 here.
        assert_eq!(bins.len(), 5);
    }

    #[test]
    fn an_overlong_sequence_gets_its_own_bin() {
        let bins = best_fit_decreasing(&[30, 2, 2], 8);
        assert_eq!(bins, vec![vec![0], vec![1, 2]]);
    }

    #[test]
    fn the_fullest_bin_that_fits_is_chosen() {
        // 7 opens bin 0 (room 3), 6 opens bin 1 (room 4), 4 fits only bin 1; 3 fits bin 0.
        let bins = best_fit_decreasing(&[7, 6, 4, 3], 10);
        assert_eq!(bins, vec![vec![0, 3], vec![1, 2]]);
        // 2 fits bins of room 3 and 4: it goes to the fuller, bin 0.
        let bins = best_fit_decreasing(&[7, 6, 2], 10);
        assert_eq!(bins, vec![vec![0, 2], vec![1]]);
    }
}
