//! Preprocessing: rotation, padding, resizing, channel conversion.

#![allow(clippy::unwrap_used, clippy::panic)]

use madeit_data::transform::{mirror, pad_center, resize_area, resize_bilinear, rotate90, to_rgb};
use madeit_data::{
    CHANNELS, DataError, IMAGE_SIZE, ImageSet, NORM_MEAN, NORM_STD, Resize, to_common,
};
use proptest::prelude::*;

fn set_from(h: usize, w: usize, c: usize, images: Vec<Vec<u8>>) -> ImageSet {
    let n = images.len();
    ImageSet::new(images.concat(), n, h, w, c, vec![0; n], vec!["x".into()]).unwrap()
}

fn arb_set() -> impl Strategy<Value = ImageSet> {
    (
        1usize..4,
        1usize..7,
        1usize..7,
        prop_oneof![Just(1usize), Just(3), Just(4)],
    )
        .prop_flat_map(|(n, h, w, c)| {
            proptest::collection::vec(any::<u8>(), n * h * w * c).prop_map(move |px| {
                ImageSet::new(px, n, h, w, c, vec![0; n], vec!["x".into()]).unwrap()
            })
        })
}

#[test]
fn rotation_matches_numpy_rot90() {
    // numpy.rot90([[0,1,2],[3,4,5]], k) for k = 1, 2, 3.
    let s = set_from(2, 3, 1, vec![vec![0, 1, 2, 3, 4, 5]]);
    let r1 = rotate90(&s, 1);
    assert_eq!((r1.height, r1.width), (3, 2));
    assert_eq!(r1.images, vec![2, 5, 1, 4, 0, 3]);
    assert_eq!(rotate90(&s, 2).images, vec![5, 4, 3, 2, 1, 0]);
    assert_eq!(rotate90(&s, 3).images, vec![3, 0, 4, 1, 5, 2]);
}

#[test]
fn mirroring_reverses_each_row() {
    // numpy.fliplr([[0,1,2],[3,4,5]]), and per pixel for several channels.
    let s = set_from(2, 3, 1, vec![vec![0, 1, 2, 3, 4, 5]]);
    let m = mirror(&s);
    assert_eq!((m.height, m.width), (2, 3));
    assert_eq!(m.images, vec![2, 1, 0, 5, 4, 3]);
    let rgb = set_from(1, 2, 3, vec![vec![1, 2, 3, 4, 5, 6]]);
    assert_eq!(mirror(&rgb).images, vec![4, 5, 6, 1, 2, 3]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn mirroring_twice_is_the_identity_and_a_half_turn_is_both_flips(s in arb_set()) {
        prop_assert_eq!(mirror(&mirror(&s)), s.clone());
        // Mirror then half turn = flip upside down; doing it twice gives back the set.
        let flipped = rotate90(&mirror(&s), 2);
        prop_assert_eq!(rotate90(&mirror(&flipped), 2), s.clone());
        prop_assert_eq!(mirror(&rotate90(&s, 2)), rotate90(&mirror(&s), 2));
    }

    #[test]
    fn four_quarter_turns_are_the_identity(s in arb_set()) {
        let r = rotate90(&rotate90(&rotate90(&rotate90(&s, 1), 1), 1), 1);
        prop_assert_eq!(&r, &s);
        prop_assert_eq!(rotate90(&s, 4), s.clone());
        prop_assert_eq!(rotate90(&rotate90(&s, 1), 2), rotate90(&s, 3));
    }

    #[test]
    fn resizing_to_the_same_size_is_the_identity(s in arb_set()) {
        prop_assert_eq!(resize_bilinear(&s, s.height, s.width).unwrap(), s.clone());
        prop_assert_eq!(resize_area(&s, s.height, s.width).unwrap(), s.clone());
        prop_assert_eq!(pad_center(&s, s.height, s.width).unwrap(), s.clone());
    }

    #[test]
    fn constant_images_stay_constant(v in any::<u8>(), h in 1usize..9, w in 1usize..9, oh in 1usize..12, ow in 1usize..12) {
        let s = set_from(h, w, 1, vec![vec![v; h * w]]);
        let up = resize_bilinear(&s, oh, ow).unwrap();
        prop_assert!(up.images.iter().all(|&x| x == v));
        let (ah, aw) = (oh.min(h), ow.min(w));
        let down = resize_area(&s, ah, aw).unwrap();
        prop_assert!(down.images.iter().all(|&x| x == v));
    }

    #[test]
    fn integer_area_shrink_averages_blocks(px in proptest::collection::vec(any::<u8>(), 36)) {
        // 6x6 -> 3x3: each output is the rounded mean of a 2x2 block.
        let s = set_from(6, 6, 1, vec![px.clone()]);
        let out = resize_area(&s, 3, 3).unwrap();
        for oy in 0..3 {
            for ox in 0..3 {
                let sum: u32 = (0..2).flat_map(|dy| (0..2).map(move |dx| (dy, dx)))
                    .map(|(dy, dx)| u32::from(px[(2 * oy + dy) * 6 + 2 * ox + dx]))
                    .sum();
                let expected = ((f64::from(sum) / 4.0) + 0.5).floor() as u8;
                prop_assert_eq!(out.images[oy * 3 + ox], expected);
            }
        }
    }

    #[test]
    fn padding_keeps_the_image_in_the_centre(s in arb_set(), dh in 0usize..5, dw in 0usize..5) {
        let p = pad_center(&s, s.height + dh, s.width + dw).unwrap();
        let (top, left, c) = (dh / 2, dw / 2, s.channels);
        for i in 0..s.n {
            let src = s.image(i).unwrap();
            let dst = p.image(i).unwrap();
            let mut inside = 0usize;
            for y in 0..p.height {
                for x in 0..p.width {
                    for ch in 0..c {
                        let v = dst[(y * p.width + x) * c + ch];
                        if (top..top + s.height).contains(&y) && (left..left + s.width).contains(&x) {
                            prop_assert_eq!(v, src[((y - top) * s.width + x - left) * c + ch]);
                            inside += 1;
                        } else {
                            prop_assert_eq!(v, 0);
                        }
                    }
                }
            }
            prop_assert_eq!(inside, src.len());
        }
    }
}

#[test]
fn bilinear_matches_torch_interpolate() {
    // Reference: torch.nn.functional.interpolate(x, size=(5, 7), mode="bilinear",
    // align_corners=False) of the 3x3 image 10*[0..9], rounded:
    // [[0, 1.43, 5.71, 10, 14.29, 18.57, 20], [12, 13.43, 17.71, 22, 26.29, 30.57, 32],
    //  [30, 31.43, 35.71, 40, 44.29, 48.57, 50], [48, 49.43, 53.71, 58, 62.29, 66.57, 68],
    //  [60, 61.43, 65.71, 70, 74.29, 78.57, 80]]
    let s = set_from(3, 3, 1, vec![(0..9).map(|v| v * 10).collect()]);
    let out = resize_bilinear(&s, 5, 7).unwrap();
    let expected: Vec<u8> = vec![
        0, 1, 6, 10, 14, 19, 20, //
        12, 13, 18, 22, 26, 31, 32, //
        30, 31, 36, 40, 44, 49, 50, //
        48, 49, 54, 58, 62, 67, 68, //
        60, 61, 66, 70, 74, 79, 80,
    ];
    assert_eq!(out.images, expected);
    // 1x2 -> 1x4: [0, 63.75, 191.25, 255].
    let s = set_from(1, 2, 1, vec![vec![0, 255]]);
    assert_eq!(
        resize_bilinear(&s, 1, 4).unwrap().images,
        vec![0, 64, 191, 255]
    );
}

#[test]
fn area_handles_non_integer_ratios() {
    // 3 -> 2: outputs cover [0, 1.5) and [1.5, 3): (a + b/2)/1.5 and (b/2 + c)/1.5.
    let s = set_from(1, 3, 1, vec![vec![30, 60, 90]]);
    assert_eq!(resize_area(&s, 1, 2).unwrap().images, vec![40, 80]);
}

#[test]
fn invalid_resizes_are_errors() {
    let s = set_from(4, 4, 1, vec![vec![0; 16]]);
    assert!(matches!(
        pad_center(&s, 3, 5).unwrap_err(),
        DataError::InvalidResize { method: "pad", .. }
    ));
    assert!(matches!(
        resize_area(&s, 5, 4).unwrap_err(),
        DataError::InvalidResize { .. }
    ));
    assert!(matches!(
        resize_bilinear(&s, 0, 4).unwrap_err(),
        DataError::InvalidResize { .. }
    ));
    let two = ImageSet::new(vec![0; 32], 1, 4, 4, 2, vec![0], vec!["x".into()]).unwrap();
    assert!(to_rgb(&two).is_ok());
    let five = ImageSet::new(vec![0; 80], 1, 4, 4, 5, vec![0], vec!["x".into()]).unwrap();
    assert!(matches!(
        to_rgb(&five).unwrap_err(),
        DataError::UnsupportedChannels { channels: 5 }
    ));
}

#[test]
fn rgb_conversion_replicates_grey_and_composites_alpha() {
    let grey = set_from(1, 2, 1, vec![vec![7, 200]]);
    assert_eq!(to_rgb(&grey).unwrap().images, vec![7, 7, 7, 200, 200, 200]);
    let rgba = set_from(1, 2, 4, vec![vec![1, 2, 3, 255, 9, 9, 9, 0]]);
    assert_eq!(to_rgb(&rgba).unwrap().images, vec![1, 2, 3, 255, 255, 255]);
}

#[test]
fn every_resize_reaches_the_common_format() {
    for (h, method) in [
        (28, Resize::Pad),
        (64, Resize::Area),
        (8, Resize::Bilinear),
        (32, Resize::Pad),
    ] {
        let s = set_from(h, h, 1, vec![vec![100; h * h]; 2]);
        let out = to_common(&s, method).unwrap();
        assert_eq!(
            (out.n, out.height, out.width, out.channels),
            (2, IMAGE_SIZE, IMAGE_SIZE, CHANNELS)
        );
        out.validate().unwrap();
    }
    // Padding cannot shrink.
    let big = set_from(64, 64, 1, vec![vec![0; 64 * 64]]);
    assert!(to_common(&big, Resize::Pad).is_err());
}

#[test]
fn normalisation_maps_bytes_to_minus_one_one() {
    let s = set_from(1, 2, 3, vec![vec![0, 255, 51, 255, 0, 102]]);
    let x = s.normalized_nchw(&[0], &NORM_MEAN, &NORM_STD).unwrap();
    // Channels first: [r0, r1, g0, g1, b0, b1].
    let expected = [0u8, 255, 255, 0, 51, 102].map(|b| (f32::from(b) / 255.0 - 0.5) / 0.5);
    for (a, b) in x.iter().zip(expected) {
        assert!((a - b).abs() < 1e-6);
    }
    assert!(s.normalized_nchw(&[1], &NORM_MEAN, &NORM_STD).is_err());
    assert!(s.normalized_nchw(&[0], &[0.5], &[0.5]).is_err());
}

#[test]
fn nchw_round_trips() {
    let s = set_from(2, 3, 3, vec![(0..18).collect(), (18..36).collect()]);
    let nchw = s.to_nchw();
    // Pixel (y=0, x=1) of image 0 is [3, 4, 5]: channel 1 at position 1 is 4.
    assert_eq!(nchw[6 + 1], 4);
    let back =
        ImageSet::from_nchw(&nchw, 2, 3, 2, 3, s.labels.clone(), s.class_names.clone()).unwrap();
    assert_eq!(back, s);
}
