//! Stacking requests along their batch axes and splitting the outputs back.
//!
//! Each tensor batches along its own axis (`BatchAxes`: Silero VAD's audio on axis 0, its state
//! `[2, N, 128]` on axis 1). A row-major tensor is `outer` blocks (the product of the dimensions
//! before its batch axis), each holding its rows contiguously, so stacking copies, for each block in
//! turn, every request's rows of that block; on axis 0 there is one block and stacking is
//! concatenation. Splitting is the reverse.

use crate::tensor::HostTensor;

/// Rows of `t` along `axis` (1 if it has no such axis).
pub fn rows(t: &HostTensor, axis: usize) -> u64 {
    t.shape.get(axis).copied().unwrap_or(1)
}

/// Blocks before `axis`: the product of the dimensions in front of it.
fn outer(shape: &[u64], axis: usize) -> Option<usize> {
    shape
        .get(..axis)?
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?))
}

/// Concatenates each input of several requests along its batch axis, `axes[i]` for input `i`.
/// `requests[r][i]` is request `r`'s input `i`, all in the model's input order, with equal shapes
/// apart from the batch axis (the scheduler batches only requests whose shape keys match).
pub fn stack(requests: &[&[HostTensor]], axes: &[usize]) -> Vec<HostTensor> {
    let Some(first) = requests.first() else {
        return Vec::new();
    };
    first
        .iter()
        .enumerate()
        .map(|(i, t0)| {
            let axis = axes.get(i).copied().unwrap_or(0);
            let total: u64 = requests.iter().map(|r| rows(&r[i], axis)).sum();
            let bytes: usize = requests.iter().map(|r| r[i].data.len()).sum();
            let mut data = Vec::with_capacity(bytes);
            let blocks = outer(&t0.shape, axis).unwrap_or(1);
            if blocks > 0 {
                for b in 0..blocks {
                    for r in requests {
                        let block = r[i].data.len() / blocks;
                        data.extend_from_slice(&r[i].data[b * block..(b + 1) * block]);
                    }
                }
            }
            let mut shape = t0.shape.clone();
            if let Some(d) = shape.get_mut(axis) {
                *d = total;
            }
            HostTensor {
                name: t0.name.clone(),
                dtype: t0.dtype,
                shape,
                data,
            }
        })
        .collect()
}

/// Splits batched outputs back into one output set per request, `rows[r]` rows for request `r`,
/// output `o` along `axes[o]`. Returns `None` if an output does not have the batch's total rows on
/// its axis (then the batch cannot be split and the requests must run one by one).
pub fn split(
    outputs: Vec<HostTensor>,
    rows: &[u64],
    axes: &[usize],
) -> Option<Vec<Vec<HostTensor>>> {
    let total: u64 = rows.iter().sum();
    let mut per_request: Vec<Vec<HostTensor>> = rows
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for (o, out) in outputs.into_iter().enumerate() {
        let axis = axes.get(o).copied().unwrap_or(0);
        if out.shape.get(axis) != Some(&total) || total == 0 {
            return None;
        }
        let blocks = outer(&out.shape, axis)?;
        let block = out.data.len().checked_div(blocks).unwrap_or(0);
        let row_bytes = block / usize::try_from(total).ok()?;
        let mut at = 0usize;
        for (r, &n) in rows.iter().enumerate() {
            let len = row_bytes.checked_mul(usize::try_from(n).ok()?)?;
            let mut data = Vec::with_capacity(len.checked_mul(blocks)?);
            for b in 0..blocks {
                let start = b * block + at;
                data.extend_from_slice(out.data.get(start..start + len)?);
            }
            let mut shape = out.shape.clone();
            shape[axis] = n;
            per_request[r].push(HostTensor {
                name: out.name.clone(),
                dtype: out.dtype,
                shape,
                data,
            });
            at += len;
        }
    }
    Some(per_request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_then_split_is_the_identity() {
        let a = vec![
            HostTensor::from_f32("x", &[1, 2], &[1.0, 2.0]),
            HostTensor::from_i64("m", &[1], &[7]),
        ];
        let b = vec![
            HostTensor::from_f32("x", &[2, 2], &[3.0, 4.0, 5.0, 6.0]),
            HostTensor::from_i64("m", &[2], &[8, 9]),
        ];
        let stacked = stack(&[&a, &b], &[0, 0]);
        assert_eq!(stacked[0].shape, vec![3, 2]);
        assert_eq!(
            stacked[0].as_f32().unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        assert_eq!(stacked[1].as_i64().unwrap(), vec![7, 8, 9]);
        assert_eq!(split(stacked, &[1, 2], &[0, 0]).unwrap(), vec![a, b]);
    }

    #[test]
    fn a_state_batches_along_its_middle_axis() {
        // [2, N, 2]: two blocks (layers), each with N rows of 2 values.
        let a = vec![HostTensor::from_f32(
            "s",
            &[2, 1, 2],
            &[1.0, 2.0, 10.0, 20.0],
        )];
        let b = vec![HostTensor::from_f32(
            "s",
            &[2, 2, 2],
            &[3.0, 4.0, 5.0, 6.0, 30.0, 40.0, 50.0, 60.0],
        )];
        let stacked = stack(&[&a, &b], &[1]);
        assert_eq!(stacked[0].shape, vec![2, 3, 2]);
        assert_eq!(
            stacked[0].as_f32().unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
        );
        // Split along the wrong axis, they do not come back.
        assert_eq!(split(stacked.clone(), &[1, 2], &[0]), None);
        assert_eq!(split(stacked, &[1, 2], &[1]).unwrap(), vec![a, b]);
    }

    #[test]
    fn outputs_without_the_batch_rows_cannot_be_split() {
        let pooled = vec![HostTensor::from_f32("sum", &[1], &[21.0])];
        assert_eq!(split(pooled, &[1, 2], &[0]), None);
    }
}
