//! Sorting a handful of rows column by column with a sorting network.
//!
//! The robust aggregators need, for every coordinate, the values of all n
//! updates in order. Sorting each coordinate's n values separately is
//! branchy scalar work; a fixed network of compare-exchanges applied to
//! whole rows is a sequence of elementwise min/max over slices, which the
//! compiler turns into SIMD. Batcher's odd-even merge sort gives a network
//! for any n with O(n log² n) comparators.

/// The comparator pairs `(lo, hi)` of Batcher's odd-even merge sort on `n`
/// inputs: after applying them in order, input `lo` holds the smaller value.
pub(crate) fn batcher_pairs(n: usize) -> Vec<(usize, usize)> {
    let mut pairs = Vec::new();
    let mut p = 1;
    while p < n {
        let mut k = p;
        while k >= 1 {
            let mut j = k % p;
            while j + k < n {
                for i in 0..k.min(n - j - k) {
                    if (i + j) / (2 * p) == (i + j + k) / (2 * p) {
                        pairs.push((i + j, i + j + k));
                    }
                }
                j += 2 * k;
            }
            k /= 2;
        }
        p *= 2;
    }
    pairs
}

/// Sort the columns of `rows` (n rows of `width` values, row-major) in
/// place, ascending down each column. Values must be finite.
pub(crate) fn sort_columns(rows: &mut [f32], width: usize, pairs: &[(usize, usize)]) {
    for &(lo, hi) in pairs {
        let (head, tail) = rows.split_at_mut(hi * width);
        let a = &mut head[lo * width..(lo + 1) * width];
        let b = &mut tail[..width];
        for (x, y) in a.iter_mut().zip(b.iter_mut()) {
            let (small, large) = if *y < *x { (*y, *x) } else { (*x, *y) };
            *x = small;
            *y = large;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_sorts_every_zero_one_input_up_to_twelve() {
        // The 0-1 principle: a network that sorts every 0/1 input sorts all inputs.
        for n in 1..=12usize {
            let pairs = batcher_pairs(n);
            for bits in 0u32..(1 << n) {
                let mut col: Vec<f32> = (0..n).map(|i| ((bits >> i) & 1) as f32).collect();
                sort_columns(&mut col, 1, &pairs);
                assert!(col.windows(2).all(|w| w[0] <= w[1]), "n={n} bits={bits:b}");
            }
        }
    }

    #[test]
    fn network_sorts_columns_for_larger_n() {
        for n in [13usize, 20, 33, 64] {
            let width = 7;
            let mut rows: Vec<f32> = (0..n * width)
                .map(|i| ((i * 2654435761usize) % 1009) as f32)
                .collect();
            let mut expect: Vec<Vec<f32>> = (0..width)
                .map(|c| (0..n).map(|r| rows[r * width + c]).collect())
                .collect();
            for col in &mut expect {
                col.sort_by(f32::total_cmp);
            }
            sort_columns(&mut rows, width, &batcher_pairs(n));
            for (c, col) in expect.iter().enumerate() {
                for (r, v) in col.iter().enumerate() {
                    assert_eq!(rows[r * width + c], *v);
                }
            }
        }
    }
}
