//! Stacking requests along the batch axis (axis 0) and splitting the outputs back.
//!
//! Row-major tensors stacked on axis 0 are their byte buffers concatenated, so both directions are
//! copies of contiguous slices.

use crate::tensor::HostTensor;

/// Concatenates each input of several requests along axis 0. `requests[r][i]` is request `r`'s input
/// `i`, all in the model's input order, with equal shapes apart from axis 0.
pub fn stack(requests: &[&[HostTensor]]) -> Vec<HostTensor> {
    let Some(first) = requests.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|i| {
            let rows: u64 = requests
                .iter()
                .map(|r| r[i].shape.first().copied().unwrap_or(1))
                .sum();
            let bytes: usize = requests.iter().map(|r| r[i].data.len()).sum();
            let mut data = Vec::with_capacity(bytes);
            for r in requests {
                data.extend_from_slice(&r[i].data);
            }
            let mut shape = first[i].shape.clone();
            if let Some(d0) = shape.first_mut() {
                *d0 = rows;
            }
            HostTensor {
                name: first[i].name.clone(),
                dtype: first[i].dtype,
                shape,
                data,
            }
        })
        .collect()
}

/// Splits batched outputs back into one output set per request, `rows[r]` rows for request `r`.
/// Returns `None` if an output does not have the batch's total rows on axis 0 (then the batch cannot
/// be split and the requests must run one by one).
pub fn split(outputs: Vec<HostTensor>, rows: &[u64]) -> Option<Vec<Vec<HostTensor>>> {
    let total: u64 = rows.iter().sum();
    let mut per_request: Vec<Vec<HostTensor>> = rows
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for out in outputs {
        if out.shape.first() != Some(&total) || total == 0 {
            return None;
        }
        let row_bytes = out.data.len() / usize::try_from(total).ok()?;
        let mut at = 0usize;
        for (r, &n) in rows.iter().enumerate() {
            let len = row_bytes.checked_mul(usize::try_from(n).ok()?)?;
            let mut shape = out.shape.clone();
            shape[0] = n;
            per_request[r].push(HostTensor {
                name: out.name.clone(),
                dtype: out.dtype,
                shape,
                data: out.data.get(at..at + len)?.to_vec(),
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
        let stacked = stack(&[&a, &b]);
        assert_eq!(stacked[0].shape, vec![3, 2]);
        assert_eq!(
            stacked[0].as_f32().unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        assert_eq!(stacked[1].as_i64().unwrap(), vec![7, 8, 9]);
        assert_eq!(split(stacked, &[1, 2]).unwrap(), vec![a, b]);
    }

    #[test]
    fn outputs_without_the_batch_rows_cannot_be_split() {
        let pooled = vec![HostTensor::from_f32("sum", &[1], &[21.0])];
        assert_eq!(split(pooled, &[1, 2]), None);
    }
}
