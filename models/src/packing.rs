//! Best-Fit-Decreasing packing of sequences into bins of at most `capacity` tokens.

/// Packs sequences of the given lengths into bins holding at most `capacity` tokens each, by
/// Best-Fit-Decreasing: longest first, each into the fullest bin it still fits, a new bin when
/// none has room. A sequence longer than `capacity` gets a bin of its own. Returns the indices
/// of the sequences of each bin, each bin in input order (so a bin reads like its sequences
/// did). Deterministic: equal lengths keep input order.
pub fn best_fit_decreasing(lengths: &[usize], capacity: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
    // Bins by remaining room; a sorted map from room to bins would make this O(n log n), but
    // evaluation sets are small next to the model's cost, so a scan keeps it plain.
    let mut bins: Vec<(usize, Vec<usize>)> = vec![];
    for i in order {
        let len = lengths[i];
        let best = bins
            .iter_mut()
            .filter(|(room, _)| *room >= len)
            .min_by_key(|(room, _)| *room);
        match best {
            Some((room, members)) => {
                *room -= len;
                members.push(i);
            }
            None => bins.push((capacity.saturating_sub(len), vec![i])),
        }
    }
    bins.into_iter()
        .map(|(_, mut members)| {
            members.sort_unstable();
            members
        })
        .collect()
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
}
