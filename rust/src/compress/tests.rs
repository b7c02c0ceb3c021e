use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestRng};

use super::*;

fn rng(seed: u8) -> TestRng {
    TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32])
}

fn uniform(rng: &mut TestRng) -> f32 {
    (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
}

/// Standard normal samples (Box–Muller) times `scale`.
fn normal(rng: &mut TestRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u = uniform(rng).max(1e-7);
            let v = uniform(rng);
            scale * (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        })
        .collect()
}

/// Values spread over many binades: sign · 2^e · m with e in [lo, hi).
fn log_spread(rng: &mut TestRng, n: usize, lo: i32, hi: i32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let e = lo + (rng.next_u32() % (hi - lo) as u32) as i32;
            let sign = if rng.next_u32() & 1 == 0 { 1.0 } else { -1.0 };
            sign * (1.0 + uniform(rng)) * 2f32.powi(e)
        })
        .collect()
}

fn roundtrip(x: &[f32], codec: Codec) -> Vec<f32> {
    let payload = encode(Values::F32(x), codec, None).unwrap();
    assert_eq!(payload.len(), codec.encoded_len(x.len()).unwrap());
    decode(&payload, codec.id(), Some(x.len())).unwrap()
}

const SIZES: &[usize] = &[1, 7, 255, 256, 257, 4096, CHUNK + 3, 3 * CHUNK + 1000];

#[test]
fn raw_is_exact() {
    let mut r = rng(1);
    for &n in SIZES {
        let x = normal(&mut r, n, 3.0);
        assert_eq!(roundtrip(&x, Codec::Raw), x);
    }
}

#[test]
fn fp16_relative_error_within_2_pow_minus_11_in_normal_range() {
    let mut r = rng(2);
    for &n in SIZES {
        let x = log_spread(&mut r, n, -14, 15);
        let y = roundtrip(&x, Codec::Fp16);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= a.abs() * 2f32.powi(-11), "{a} -> {b}");
        }
    }
}

#[test]
fn fp16_below_normal_range_has_absolute_error_within_2_pow_minus_25() {
    let mut r = rng(3);
    let x = log_spread(&mut r, 10_000, -40, -14);
    let y = roundtrip(&x, Codec::Fp16);
    for (a, b) in x.iter().zip(&y) {
        assert!((a - b).abs() <= 2f32.powi(-25), "{a} -> {b}");
    }
}

#[test]
fn fp16_refuses_values_that_would_overflow_and_names_the_position() {
    let mut x = vec![1.0f32; 100];
    x[42] = 65519.0; // still rounds to 65504
    assert!(encode(Values::F32(&x), Codec::Fp16, None).is_ok());
    x[57] = -65520.0;
    match encode(Values::F32(&x), Codec::Fp16, None) {
        Err(Error::Codec(m)) => assert!(m.contains("position 57") && m.contains("fp16"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bf16_relative_error_within_2_pow_minus_8() {
    let mut r = rng(4);
    for &n in SIZES {
        let x = log_spread(&mut r, n, -126, 127);
        let y = roundtrip(&x, Codec::Bf16);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= a.abs() * 2f32.powi(-8), "{a} -> {b}");
        }
    }
}

#[test]
fn overflow_thresholds_are_the_halfway_points() {
    assert_eq!(cast::BF16_OVERFLOW.to_bits(), 0x7f7f_8000);
    assert!(bf16::from_f32(f32::from_bits(0x7f7f_7fff)).is_finite());
    assert!(bf16::from_f32(cast::BF16_OVERFLOW).is_infinite());
    assert!(f16::from_f32(cast::FP16_OVERFLOW).is_infinite());
    assert!(f16::from_f32(65519.99).is_finite());
}

#[test]
fn bf16_refuses_overflow_to_infinity() {
    let x = [1.0, f32::MAX];
    match encode(Values::F32(&x), Codec::Bf16, None) {
        Err(Error::Codec(m)) => assert!(m.contains("position 1"), "{m}"),
        other => panic!("{other:?}"),
    }
}

fn int8_bound_holds(x: &[f32], block_size: usize, y: &[f32]) {
    let scales = int8::reference_scales(x, block_size);
    for (i, (a, b)) in x.iter().zip(y).enumerate() {
        let s = scales[i / block_size];
        assert!(
            (a - b).abs() <= s / 2.0 + s * 2f32.powi(-15),
            "position {i}: {a} -> {b}, scale {s}"
        );
    }
}

#[test]
fn int8_error_within_half_a_scale_for_various_block_sizes() {
    let mut r = rng(5);
    for &n in SIZES {
        for block_size in [1u32, 3, 64, 256, 1000, 1 << 20] {
            let mut x = normal(&mut r, n, 0.01);
            // Mix in blocks of wildly different magnitude and a zero block.
            for (i, v) in x.iter_mut().enumerate() {
                if (i / 300) % 3 == 1 {
                    *v *= 1e4;
                } else if (i / 300) % 7 == 2 {
                    *v = 0.0;
                }
            }
            let codec = Codec::Int8 { block_size };
            let y = roundtrip(&x, codec);
            int8_bound_holds(&x, block_size as usize, &y);
        }
    }
}

#[test]
fn int8_handles_the_extremes_of_f32() {
    let x = [f32::MAX, -f32::MAX, 1.0, 0.0];
    let y = roundtrip(&x, Codec::Int8 { block_size: 4 });
    assert!(y.iter().all(|v| v.is_finite()));
    assert!((y[0] - x[0]).abs() <= x[0] / 254.0 * 1.001);
}

#[test]
fn int8_scale_never_rounds_below_the_block_maximum() {
    // max/127 < 2⁻¹⁵⁰ would round to a zero scale and lose the block.
    let tiny = f32::from_bits(60);
    let y = roundtrip(&[tiny, -tiny, 0.0], Codec::Int8 { block_size: 3 });
    assert_eq!(y, [tiny, -tiny, 0.0]);
}

#[test]
fn int8_handles_subnormal_scales() {
    let x: Vec<f32> = (0..100).map(|i| (i as f32 - 50.0) * 1e-40).collect();
    let y = roundtrip(&x, Codec::Int8 { block_size: 32 });
    for (a, b) in x.iter().zip(&y) {
        assert!((a - b).abs() <= 50e-40 / 127.0, "{a} -> {b}");
    }
}

#[test]
fn half_precision_inputs_encode_like_their_f32_values() {
    let mut r = rng(6);
    let x = normal(&mut r, 5000, 2.0);
    let h: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
    let b: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    let hf: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
    let bf: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
    for codec in [
        Codec::Raw,
        Codec::Fp16,
        Codec::Bf16,
        Codec::Int8 { block_size: 128 },
        Codec::Int4 { block_size: 128 },
        Codec::TopK { k: 100 },
    ] {
        assert_eq!(
            encode(Values::F16(&h), codec, None).unwrap(),
            encode(Values::F32(&hf), codec, None).unwrap()
        );
        assert_eq!(
            encode(Values::Bf16(&b), codec, None).unwrap(),
            encode(Values::F32(&bf), codec, None).unwrap()
        );
    }
    // A half-precision input survives its own cast exactly.
    assert_eq!(roundtrip(&hf, Codec::Fp16), hf);
    assert_eq!(roundtrip(&bf, Codec::Bf16), bf);
}

#[test]
fn encoders_refuse_non_finite_and_empty_input() {
    let mut x = vec![0.5f32; 3 * CHUNK];
    x[CHUNK + 5] = f32::NAN;
    x[2 * CHUNK] = f32::INFINITY;
    for codec in [
        Codec::Raw,
        Codec::Fp16,
        Codec::Bf16,
        Codec::Int8 { block_size: 256 },
        Codec::Int4 { block_size: 255 },
        Codec::TopK { k: 10 },
    ] {
        assert_eq!(
            encode(Values::F32(&x), codec, None),
            Err(Error::NonFinite {
                update: 0,
                position: CHUNK + 5
            }),
            "{codec:?}"
        );
        assert!(matches!(
            encode(Values::F32(&[]), codec, None),
            Err(Error::Empty(_))
        ));
    }
}

#[test]
fn parameters_out_of_range_are_refused() {
    let x = [1.0f32; 10];
    for codec in [
        Codec::Int8 { block_size: 0 },
        Codec::Int8 {
            block_size: MAX_BLOCK_SIZE + 1,
        },
        Codec::Int4 { block_size: 0 },
        Codec::TopK { k: 0 },
        Codec::TopK { k: 11 },
    ] {
        assert!(
            matches!(
                encode(Values::F32(&x), codec, None),
                Err(Error::InvalidArgument(_))
            ),
            "{codec:?}"
        );
    }
    assert!(matches!(
        Codec::from_name("zip", 1, None),
        Err(Error::UnknownCodec(_))
    ));
    assert!(matches!(
        Codec::from_name("topk", 1, None),
        Err(Error::InvalidArgument(_))
    ));
    let mut residual = vec![0f32; 10];
    assert!(matches!(
        encode(Values::F32(&x), Codec::Raw, Some(&mut residual)),
        Err(Error::InvalidArgument(m)) if m.contains("raw is exact")
    ));
    let mut short = vec![0f32; 9];
    assert!(matches!(
        encode(Values::F32(&x), Codec::TopK { k: 2 }, Some(&mut short)),
        Err(Error::ShapeMismatch { index: 1, .. })
    ));
}

#[test]
fn topk_sends_exactly_the_k_largest_magnitudes() {
    let mut r = rng(7);
    for &n in SIZES {
        let x = normal(&mut r, n, 1.0);
        for k in [1, n.div_ceil(100), n / 2 + 1, n] {
            let y = roundtrip(&x, Codec::TopK { k: k as u64 });
            let sent: Vec<usize> = (0..n).filter(|&i| y[i] != 0.0).collect();
            assert_eq!(sent.len(), k);
            for &i in &sent {
                assert_eq!(y[i], x[i]);
            }
            let mut mags: Vec<f32> = x.iter().map(|v| v.abs()).collect();
            mags.sort_by(|a, b| b.total_cmp(a));
            let min_sent = sent.iter().map(|&i| x[i].abs()).fold(f32::MAX, f32::min);
            assert_eq!(min_sent, mags[k - 1], "n={n} k={k}");
        }
    }
}

#[test]
fn topk_breaks_ties_towards_lower_indices() {
    let x = [1.0f32, -2.0, 2.0, 0.5, 2.0, -2.0];
    let payload = encode(Values::F32(&x), Codec::TopK { k: 2 }, None).unwrap();
    let y = decode(&payload, CodecId::TopK, None).unwrap();
    assert_eq!(y, [0.0, -2.0, 2.0, 0.0, 0.0, 0.0]);
    // Ties spanning parallel chunks are settled the same way.
    let mut x = vec![1.0f32; 3 * CHUNK];
    x[CHUNK * 2 + 1] = 5.0;
    let y = roundtrip(&x, Codec::TopK { k: 4 });
    let sent: Vec<usize> = (0..x.len()).filter(|&i| y[i] != 0.0).collect();
    assert_eq!(sent, [0, 1, 2, CHUNK * 2 + 1]);
}

#[test]
fn topk_error_feedback_loses_nothing_over_many_rounds() {
    let mut r = rng(8);
    let n = 5000;
    let mut residual = vec![0f32; n];
    let mut total_in = vec![0f64; n];
    let mut total_sent = vec![0f64; n];
    for round in 0..50 {
        let x = normal(&mut r, n, 1.0 + round as f32 * 0.1);
        x.iter()
            .zip(&mut total_in)
            .for_each(|(a, t)| *t += *a as f64);
        let payload = encode(Values::F32(&x), Codec::TopK { k: 50 }, Some(&mut residual)).unwrap();
        let sent = decode(&payload, CodecId::TopK, Some(n)).unwrap();
        sent.iter()
            .zip(&mut total_sent)
            .for_each(|(a, t)| *t += *a as f64);
        for (i, s) in sent.iter().enumerate() {
            if *s != 0.0 {
                assert_eq!(residual[i], 0.0, "sent coordinates leave no residual");
            }
        }
    }
    for i in 0..n {
        let kept = total_sent[i] + residual[i] as f64;
        assert!(
            (kept - total_in[i]).abs() <= 1e-4 * (1.0 + total_in[i].abs()),
            "coordinate {i}: sent + residual = {kept}, inputs sum to {}",
            total_in[i]
        );
    }
}

#[test]
fn topk_refusal_leaves_the_residual_untouched() {
    let x = [1.0f32, 2.0, 3.0];
    let mut residual = vec![0.25f32, f32::MAX, 0.0];
    let before = residual.clone();
    let err = encode(
        Values::F32(&[1.0, f32::MAX, 3.0]),
        Codec::TopK { k: 1 },
        Some(&mut residual),
    );
    assert!(matches!(err, Err(Error::InvalidArgument(m)) if m.contains("position 1")));
    residual[2] = f32::NAN;
    let before_nan = residual.clone();
    let err = encode(Values::F32(&x), Codec::TopK { k: 1 }, Some(&mut residual));
    assert_eq!(
        err,
        Err(Error::NonFinite {
            update: 1,
            position: 2
        })
    );
    assert_eq!(residual[..2], before[..2]);
    assert!(residual[2].is_nan() && before_nan[2].is_nan());
}

#[test]
fn zstd_round_trips_shrinks_and_caps() {
    let x: Vec<f32> = (0..100_000).map(|i| (i % 7) as f32).collect();
    let payload = encode(Values::F32(&x), Codec::Raw, None).unwrap();
    let packed = zstd_compress(&payload, DEFAULT_ZSTD_LEVEL).unwrap();
    assert!(packed.len() * 10 < payload.len());
    assert_eq!(zstd_decompress(&packed, payload.len()).unwrap(), payload);
    assert!(matches!(
        zstd_decompress(&packed, payload.len() - 1),
        Err(Error::Codec(_))
    ));
    assert!(matches!(
        zstd_decompress(b"not zstd at all", 1 << 20),
        Err(Error::Codec(_))
    ));
    assert!(matches!(
        zstd_decompress(&packed[..packed.len() / 2], 1 << 20),
        Err(Error::Codec(_))
    ));
    assert!(matches!(
        zstd_compress(&payload, 99),
        Err(Error::InvalidArgument(_))
    ));
}

fn codec_err(r: Result<Vec<f32>>, needle: &str) {
    match r {
        Err(Error::Codec(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected a codec error containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn corrupt_payloads_get_errors_naming_the_problem() {
    let x: Vec<f32> = (0..10).map(|i| i as f32 - 4.5).collect();
    let int8 = encode(Values::F32(&x), Codec::Int8 { block_size: 4 }, None).unwrap();
    let topk = encode(Values::F32(&x), Codec::TopK { k: 3 }, None).unwrap();

    codec_err(decode(&[0, 0, 0], CodecId::Raw, None), "whole number");
    codec_err(decode(&[], CodecId::Fp16, None), "empty");
    codec_err(
        decode(&0x7c00u16.to_le_bytes(), CodecId::Fp16, None),
        "non-finite",
    );
    codec_err(
        decode(&0x7fc0u16.to_le_bytes(), CodecId::Bf16, None),
        "non-finite",
    );
    codec_err(
        decode(&f32::NAN.to_le_bytes(), CodecId::Raw, None),
        "non-finite",
    );
    codec_err(decode(&[0u8; 8], CodecId::Raw, Some(3)), "expected 3");

    codec_err(decode(&int8[..5], CodecId::Int8, None), "truncated");
    codec_err(decode(&int8[..int8.len() - 1], CodecId::Int8, None), "need");
    codec_err(
        decode(&[int8.clone(), vec![0]].concat(), CodecId::Int8, None),
        "need",
    );
    codec_err(decode(&int8, CodecId::Int8, Some(11)), "expected 11");
    let mut bad = int8.clone();
    bad[..4].copy_from_slice(&0u32.to_le_bytes());
    codec_err(decode(&bad, CodecId::Int8, None), "block_size 0");
    let mut bad = int8.clone();
    bad[4..12].copy_from_slice(&u64::MAX.to_le_bytes());
    codec_err(decode(&bad, CodecId::Int8, None), "need");
    let mut bad = int8.clone();
    bad[16..20].copy_from_slice(&f32::INFINITY.to_le_bytes());
    codec_err(decode(&bad, CodecId::Int8, None), "scale inf for block 1");
    bad[16..20].copy_from_slice(&1e37f32.to_le_bytes());
    codec_err(decode(&bad, CodecId::Int8, None), "for block 1");
    let mut bad = int8.clone();
    bad[12..16].copy_from_slice(&(-1f32).to_le_bytes());
    codec_err(decode(&bad, CodecId::Int8, None), "invalid scale");
    let mut bad = int8.clone();
    let last = bad.len() - 1;
    bad[last] = 0x80;
    codec_err(decode(&bad, CodecId::Int8, None), "-128 at position 9");

    codec_err(decode(&topk[..11], CodecId::TopK, None), "truncated");
    codec_err(
        decode(&topk[..topk.len() - 4], CodecId::TopK, None),
        "needs",
    );
    codec_err(decode(&topk, CodecId::TopK, Some(9)), "expected 9");
    let mut bad = topk.clone();
    bad[8..12].copy_from_slice(&11u32.to_le_bytes());
    codec_err(decode(&bad, CodecId::TopK, None), "k = 11");
    let mut bad = topk.clone();
    bad[..8].copy_from_slice(&0u64.to_le_bytes());
    codec_err(decode(&bad, CodecId::TopK, None), "0 elements");
    let indices = |b: &mut Vec<u8>, idx: [u32; 3]| {
        for (j, i) in idx.iter().enumerate() {
            b[12 + 4 * j..16 + 4 * j].copy_from_slice(&i.to_le_bytes());
        }
    };
    let mut bad = topk.clone();
    indices(&mut bad, [0, 5, 10]);
    codec_err(decode(&bad, CodecId::TopK, None), "out of range");
    let mut bad = topk.clone();
    indices(&mut bad, [0, 5, 5]);
    codec_err(decode(&bad, CodecId::TopK, None), "strictly increase");
    let mut bad = topk.clone();
    indices(&mut bad, [4, 2, 7]);
    codec_err(decode(&bad, CodecId::TopK, None), "strictly increase");
    let mut bad = topk.clone();
    bad[24..28].copy_from_slice(&f32::NAN.to_le_bytes());
    codec_err(decode(&bad, CodecId::TopK, None), "non-finite");
}

fn any_codec() -> impl Strategy<Value = CodecId> {
    prop::sample::select(CodecId::ALL.to_vec())
}

fn small_update() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-1e3f32..1e3f32, 1..200)
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200), id in any_codec()) {
        let _ = decode(&bytes, id, None);
        let _ = zstd_decompress(&bytes, 1 << 16);
    }

    #[test]
    fn mutated_payloads_never_panic(
        x in small_update(),
        id in any_codec(),
        block in 1u32..64,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let codec = Codec::from_name(id.name(), block, Some(x.len().div_ceil(4) as u64)).unwrap();
        let clean = encode(Values::F32(&x), codec, None).unwrap();
        let mut payload = clean.clone();
        for (at, byte) in flips {
            let i = at.index(payload.len());
            payload[i] ^= byte;
        }
        if let Ok(y) = decode(&payload, id, Some(x.len())) {
            prop_assert!(y.iter().all(|v| v.is_finite()));
        }
        // Without the expected size a flipped top-k count may name billions
        // of elements; decoding must still not panic.
        let _ = decode(&payload, id, None);
        let end = cut.index(payload.len());
        if matches!(id, CodecId::Int8 | CodecId::Int4 | CodecId::TopK) {
            prop_assert!(decode(&clean[..end], id, None).is_err());
        }
        let packed = zstd_compress(&payload, 1).unwrap();
        let _ = zstd_decompress(&packed[..end.min(packed.len())], 1 << 16);
    }

    #[test]
    fn int8_bound_holds_for_any_input(x in small_update(), block in 1u32..64) {
        let y = roundtrip(&x, Codec::Int8 { block_size: block });
        int8_bound_holds(&x, block as usize, &y);
    }

    #[test]
    fn topk_conserves_mass_each_round(x in small_update(), r0 in small_update(), kf in 0.0f64..1.0) {
        let n = x.len().min(r0.len());
        let (x, mut residual) = (&x[..n], r0[..n].to_vec());
        let k = ((n as f64 * kf) as u64).clamp(1, n as u64);
        let payload = encode(Values::F32(x), Codec::TopK { k }, Some(&mut residual)).unwrap();
        let sent = decode(&payload, CodecId::TopK, Some(n)).unwrap();
        for i in 0..n {
            prop_assert_eq!(sent[i] + residual[i], x[i] + r0[i]);
        }
    }
}
