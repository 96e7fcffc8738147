//! The activation arena of a compiled network: which buffer each intermediate value lives in. Values are
//! written once and read by later steps; a buffer is reused as soon as the last reader of its value has run, so
//! a ResNet's activations take four or five buffers whatever its depth, each as long as the longest value it
//! ever holds. A step may also write over a value it reads, when it is that value's last reader and its kernel
//! reads each element just before overwriting it (a residual block's last convolution over its shortcut).

/// Where each value lives: `slot[v]`, and how many floats each slot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The slot of each value.
    pub slot: Vec<usize>,
    /// Floats per slot (the longest value it holds).
    pub lens: Vec<usize>,
}

/// Assigns slots to values `0..lens.len()`, where step `s` writes value `writes[s]` after reading the values
/// `reads[s]` (each written by an earlier step, or value 0, the input, written before step 0). A value's slot
/// is free again after the last step that reads it. A step never writes into a slot it reads, except the slot
/// of `over[s]` (one of its reads, as long as its output), which it takes when no later step reads that value.
pub fn assign(
    lens: &[usize],
    writes: &[usize],
    reads: &[Vec<usize>],
    over: &[Option<usize>],
) -> Assignment {
    let values = lens.len();
    // The last step that reads each value (values nobody reads, such as the output, live to the end).
    let mut last_read = vec![usize::MAX; values];
    for (s, r) in reads.iter().enumerate() {
        for &v in r {
            last_read[v] = s;
        }
    }
    let mut slot = vec![usize::MAX; values];
    let mut slot_lens: Vec<usize> = Vec::new();
    let mut busy: Vec<bool> = Vec::new();
    let mut take = |v: usize, busy: &mut Vec<bool>, slot: &mut Vec<usize>| {
        // The free slot nearest in size (fewest floats added), else a new one.
        let free = (0..busy.len())
            .filter(|&i| !busy[i])
            .min_by_key(|&i| (lens[v].saturating_sub(slot_lens[i]), slot_lens[i]));
        let i = free.unwrap_or_else(|| {
            busy.push(false);
            slot_lens.push(0);
            busy.len() - 1
        });
        busy[i] = true;
        slot_lens[i] = slot_lens[i].max(lens[v]);
        slot[v] = i;
    };
    take(0, &mut busy, &mut slot);
    for (s, &w) in writes.iter().enumerate() {
        match over[s] {
            Some(v) if last_read[v] == s && lens[v] == lens[w] => {
                debug_assert!(reads[s].contains(&v));
                // The value's slot passes to the output, busy still.
                slot[w] = slot[v];
            }
            _ => take(w, &mut busy, &mut slot),
        }
        for &v in &reads[s] {
            if last_read[v] == s && slot[v] != slot[w] {
                busy[slot[v]] = false;
            }
        }
    }
    Assignment {
        slot,
        lens: slot_lens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A residual block: the input is read by the block's last step too, so three slots hold four values; the
    /// next block reuses the freed ones.
    #[test]
    fn values_share_slots_once_read() {
        // v0 input; v1 = a(v0); v2 = b(v1); v3 = c(v2, v0); v4 = d(v3).
        let lens = [10, 20, 20, 10, 5];
        let writes = [1, 2, 3, 4];
        let reads = vec![vec![0], vec![1], vec![2, 0], vec![3]];
        let a = assign(&lens, &writes, &reads, &[None; 4]);
        assert_eq!(a.slot.len(), 5);
        // Every step writes a slot none of its inputs is in, and no live value's slot is reused.
        for (s, &w) in writes.iter().enumerate() {
            assert!(reads[s].iter().all(|&r| a.slot[r] != a.slot[w]));
        }
        assert_ne!(a.slot[0], a.slot[2], "the input is live until step 2");
        assert_eq!(a.lens.len(), 3);
        for (v, &len) in lens.iter().enumerate() {
            assert!(a.lens[a.slot[v]] >= len);
        }
    }

    /// A residual block whose last step writes over its shortcut: the output takes the input's slot; not when a
    /// later step still reads the shortcut, nor when the lengths differ.
    #[test]
    fn a_last_reader_writes_over_the_value() {
        // v0 input; v1 = a(v0); v2 = b(v1); v3 = c(v2) + v0, over v0; v4 = d(v3).
        let lens = [10, 20, 20, 10, 5];
        let writes = [1, 2, 3, 4];
        let reads = vec![vec![0], vec![1], vec![2, 0], vec![3]];
        let over = [None, None, Some(0), None];
        let a = assign(&lens, &writes, &reads, &over);
        assert_eq!(a.slot[3], a.slot[0]);
        assert_ne!(a.slot[3], a.slot[2]);
        assert_eq!(a.lens.len(), 3);
        for (v, &len) in lens.iter().enumerate() {
            assert!(a.lens[a.slot[v]] >= len);
        }
        // v0 read again by step 3: step 2 may not take its slot.
        let reads = vec![vec![0], vec![1], vec![2, 0], vec![3, 0]];
        let a = assign(&lens, &writes, &reads, &over);
        assert_ne!(a.slot[3], a.slot[0]);
        // An output longer than the value: a slot of its own.
        let lens = [10, 20, 20, 12, 5];
        let reads = vec![vec![0], vec![1], vec![2, 0], vec![3]];
        let a = assign(&lens, &writes, &reads, &over);
        assert_ne!(a.slot[3], a.slot[0]);
    }
}
