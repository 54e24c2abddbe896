//! Readers of the fonts, the Twemoji and the clip-art stamps, on small fixtures: tiny
//! TrueType fonts written by `tests/fixtures/make_fixture_fonts.py`, PNGs made here.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::encode_png;
use madeit_data::DataError;
use madeit_data::readers::emoji::{EMOJI_CATEGORIES, EmojiVendor, read_emoji_of};
use madeit_data::readers::fonts::{
    FONT_CANVAS, FONT_CLASSES, FONT_LOWERCASE, FontImages, FontSkip, font_lowercase_class_names,
    read_font_dir, read_fonts, read_fonts_chars, render_font, render_font_chars,
};
use madeit_data::readers::tuxpaint::{
    TUXPAINT_CATEGORIES, TUXPAINT_SIZE, letterbox_rgb, read_tuxpaint,
};

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap()
}

#[test]
fn a_font_renders_twenty_centred_white_on_black_images() {
    let images = render_font(&fixture("fixture_full.ttf"), "fixture_full.ttf")
        .unwrap()
        .unwrap();
    let side = FONT_CANVAS * FONT_CANVAS;
    assert_eq!(images.len(), FONT_CLASSES.len() * side);
    for (k, img) in images.chunks_exact(side).enumerate() {
        // Ink present, the border is black, the ink is centred: the bounding box of the lit
        // pixels is within one pixel of the canvas centre and its longer side is the
        // 20-pixel box.
        let lit: Vec<(usize, usize)> = (0..side)
            .filter(|&p| img[p] > 127)
            .map(|p| (p / FONT_CANVAS, p % FONT_CANVAS))
            .collect();
        assert!(!lit.is_empty(), "glyph {k} is empty");
        let (y0, y1) = (
            lit.iter().map(|p| p.0).min().unwrap(),
            lit.iter().map(|p| p.0).max().unwrap(),
        );
        let (x0, x1) = (
            lit.iter().map(|p| p.1).min().unwrap(),
            lit.iter().map(|p| p.1).max().unwrap(),
        );
        let longer = (y1 - y0 + 1).max(x1 - x0 + 1);
        assert!((19..=21).contains(&longer), "glyph {k}: box {longer}");
        let (cy, cx) = ((y0 + y1) as f64 / 2.0, (x0 + x1) as f64 / 2.0);
        let mid = (FONT_CANVAS - 1) as f64 / 2.0;
        assert!(
            (cy - mid).abs() <= 1.0 && (cx - mid).abs() <= 1.0,
            "glyph {k} at {cy},{cx}"
        );
        assert!(
            img[..FONT_CANVAS].iter().all(|&v| v == 0),
            "top row of glyph {k}"
        );
    }
    // The same bytes render the same images (determinism).
    let again = render_font(&fixture("fixture_full.ttf"), "x")
        .unwrap()
        .unwrap();
    assert_eq!(images, again);
}

/// The three fixture fonts under the names `a/full.ttf`, `b/partial.ttf` (missing `J` and `j`)
/// and `c/clone.ttf` (a copy of the full one).
fn fixture_fonts() -> [(&'static str, Vec<u8>); 3] {
    [
        ("a/full.ttf", fixture("fixture_full.ttf")),
        ("b/partial.ttf", fixture("fixture_partial.ttf")),
        ("c/clone.ttf", fixture("fixture_clone.ttf")),
    ]
}

/// Asserts that of [`fixture_fonts`] only the full font was kept: the partial one skipped for
/// lacking `missing`, the clone as a duplicate.
fn assert_only_the_full_font_kept(out: &FontImages, missing: char) {
    assert_eq!(out.fonts, vec!["a/full.ttf".to_owned()]);
    assert_eq!(
        out.skipped,
        vec![
            ("b/partial.ttf".to_owned(), FontSkip::MissingGlyph(missing)),
            ("c/clone.ttf".to_owned(), FontSkip::Duplicate),
        ]
    );
}

#[test]
fn fonts_missing_a_character_and_duplicates_are_skipped() {
    let fonts = fixture_fonts();
    let out = read_fonts(fonts.iter().map(|(name, bytes)| (*name, bytes.as_slice()))).unwrap();
    assert_only_the_full_font_kept(&out, 'J');
    assert_eq!(out.set.n, 20);
    assert_eq!(out.set.labels, (0..20).collect::<Vec<u32>>());
    assert_eq!(out.set.class_names[0], "0");
    assert_eq!(out.set.class_names[10], "A");
    assert_eq!(
        (out.set.height, out.set.width, out.set.channels),
        (28, 28, 1)
    );
}

#[test]
fn lower_case_letters_are_rendered_as_their_own_set_and_named_by_their_letter() {
    let fonts = fixture_fonts();
    let full = &fonts[0].1;
    let names = font_lowercase_class_names();
    assert_eq!(names, ["A", "B", "C", "D", "E", "F", "G", "H", "I", "J"]);
    let out = read_fonts_chars(
        fonts.iter().map(|(name, bytes)| (*name, bytes.as_slice())),
        &FONT_LOWERCASE,
        names.clone(),
    )
    .unwrap();
    assert_only_the_full_font_kept(&out, 'j');
    assert_eq!(out.set.n, 10);
    assert_eq!(out.set.labels, (0..10).collect::<Vec<u32>>());
    assert_eq!(out.set.class_names, names);
    // The lower-case images are the glyphs of `a`-`j`, not those of the capitals.
    let side = FONT_CANVAS * FONT_CANVAS;
    let capitals = render_font_chars(full, "full", &FONT_CLASSES[10..])
        .unwrap()
        .unwrap();
    assert_eq!(out.set.images.len(), 10 * side);
    for k in 0..10 {
        assert_ne!(
            out.set.images[k * side..(k + 1) * side],
            capitals[k * side..(k + 1) * side],
            "letter {k}"
        );
    }
}

#[test]
fn an_undecodable_font_is_an_error_naming_the_file() {
    let mut bytes = fixture("fixture_full.ttf");
    bytes.truncate(40);
    let err = read_fonts([("fonts/broken.ttf", bytes.as_slice())]).unwrap_err();
    assert!(matches!(&err, DataError::Font { file, .. } if file == "fonts/broken.ttf"));
    assert!(err.to_string().contains("fonts/broken.ttf"));
    let err = read_fonts([("x.otf", b"not a font at all".as_slice())]).unwrap_err();
    assert!(err.to_string().contains("x.otf"));
    // No usable font at all.
    let partial = fixture("fixture_partial.ttf");
    assert!(matches!(
        read_fonts([("p.ttf", partial.as_slice())]),
        Err(DataError::Malformed { .. })
    ));
}

#[test]
fn a_font_folder_is_read_recursively_in_path_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("truetype/b")).unwrap();
    std::fs::create_dir_all(dir.path().join("opentype/a")).unwrap();
    std::fs::write(
        dir.path().join("truetype/b/Full.TTF"),
        fixture("fixture_full.ttf"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("opentype/a/clone.otf"),
        fixture("fixture_clone.ttf"),
    )
    .unwrap();
    std::fs::write(dir.path().join("opentype/a/readme.txt"), b"not a font").unwrap();
    let out = read_font_dir(dir.path()).unwrap();
    // `opentype/...` sorts first, so the clone is kept and the later file is the duplicate.
    assert_eq!(out.fonts.len(), 1);
    assert!(out.fonts[0].ends_with("opentype/a/clone.otf"));
    assert_eq!(out.skipped.len(), 1);
}

// ---------------------------------------------------------------- Twemoji

fn emoji_json() -> String {
    // Two base emoji with a Twitter image, one with only a Google image, one component.
    r#"[
      {"image": "1f600.png", "short_name": "grinning", "category": "Smileys & Emotion",
       "subcategory": "face-smiling", "sort_order": 1, "has_img_google": true,
       "has_img_twitter": true},
      {"image": "1f436.png", "short_name": "dog", "category": "Animals & Nature",
       "subcategory": "animal-mammal", "sort_order": 2, "has_img_google": true,
       "has_img_twitter": true},
      {"image": "1f9ff.png", "short_name": "google only", "category": "Objects",
       "subcategory": "other-object", "sort_order": 3, "has_img_google": true,
       "has_img_twitter": false},
      {"image": "1f3fb.png", "short_name": "light skin", "category": "Component",
       "subcategory": "skin-tone", "sort_order": 4, "has_img_google": true,
       "has_img_twitter": true}
    ]"#
    .to_owned()
}

#[test]
fn twemoji_follow_the_twitter_flags_and_keep_subcategories() {
    let red: Vec<u8> = (0..4 * 4).flat_map(|_| [255, 0, 0, 255]).collect();
    let png = encode_png(4, 4, png::ColorType::Rgba, &red);
    let mut asked = Vec::new();
    let out = read_emoji_of(
        emoji_json().as_bytes(),
        "emoji.json",
        EmojiVendor::Twitter,
        |name| {
            asked.push(name.to_owned());
            Ok(png.clone())
        },
    )
    .unwrap();
    assert_eq!(asked, vec!["1f600.png", "1f436.png"]);
    assert_eq!(out.set.n, 2);
    assert_eq!(out.set.class_names.len(), EMOJI_CATEGORIES.len());
    assert_eq!(out.set.labels, vec![0, 2]);
    assert_eq!(out.subcategory_names, vec!["face-smiling", "animal-mammal"]);
    assert_eq!(out.subcategory, vec![0, 1]);
    // The Google flags select three pictures (the component is dropped either way).
    let google = read_emoji_of(
        emoji_json().as_bytes(),
        "emoji.json",
        EmojiVendor::Google,
        |_| Ok(png.clone()),
    )
    .unwrap();
    assert_eq!(google.set.n, 3);
}

#[test]
fn an_undecodable_twemoji_png_is_an_error_naming_it() {
    let err = read_emoji_of(
        emoji_json().as_bytes(),
        "emoji.json",
        EmojiVendor::Twitter,
        |_| Ok(b"\x89PNG broken".to_vec()),
    )
    .unwrap_err();
    assert!(matches!(&err, DataError::Png { file, .. } if file == "1f600.png"));
}

// ---------------------------------------------------------------- clip-art stamps

#[test]
fn stamps_are_letterboxed_on_white_and_labelled_by_folder() {
    // A 2 x 4 opaque blue image: letterboxed into a white square, which is smaller than
    // 32 x 32 and so centred on a white 32 x 32 canvas.
    let blue: Vec<u8> = (0..2 * 4).flat_map(|_| [0, 0, 255, 255]).collect();
    let wide = encode_png(4, 2, png::ColorType::Rgba, &blue);
    // A transparent 3 x 3 image becomes white.
    let clear = encode_png(3, 3, png::ColorType::Rgba, &[0u8; 3 * 3 * 4]);
    let set = read_tuxpaint([
        ("animals/mammals/cat.png", wide.as_slice()),
        ("symbols/alphabets/a.png", clear.as_slice()),
        ("vehicles/bus.png", clear.as_slice()),
    ])
    .unwrap();
    assert_eq!(set.n, 2, "the symbols are not a kept category");
    assert_eq!(set.labels, vec![0, TUXPAINT_CATEGORIES.len() as u32 - 1]);
    assert_eq!(
        (set.height, set.width, set.channels),
        (TUXPAINT_SIZE, TUXPAINT_SIZE, 3)
    );
    let first = set.image(0).unwrap();
    let px =
        |y: usize, x: usize| &first[(y * TUXPAINT_SIZE + x) * 3..(y * TUXPAINT_SIZE + x) * 3 + 3];
    assert_eq!(px(0, 16), &[255, 255, 255], "white band above");
    assert_eq!(px(16, 16), &[0, 0, 255], "blue in the middle");
    assert_eq!(px(31, 0), &[255, 255, 255], "white band below");
    assert!(set.image(1).unwrap().iter().all(|&v| v == 255));
}

#[test]
fn letterboxing_averages_when_shrinking() {
    // A 64 x 64 black-and-white checkerboard of 1-pixel squares averages to mid grey.
    let rgb: Vec<u8> = (0..64 * 64)
        .flat_map(|p| {
            let v = if (p / 64 + p % 64) % 2 == 0 { 0 } else { 255 };
            [v, v, v]
        })
        .collect();
    let out = letterbox_rgb(&rgb, 64, 64).unwrap();
    assert_eq!(out.len(), 32 * 32 * 3);
    assert!(out.iter().all(|&v| v == 128), "{:?}", &out[..6]);
    assert!(letterbox_rgb(&[], 0, 0).is_err());
}

#[test]
fn an_undecodable_stamp_is_an_error_naming_it() {
    let err = read_tuxpaint([("food/apple.png", b"garbage".as_slice())]).unwrap_err();
    assert!(matches!(&err, DataError::Png { file, .. } if file == "food/apple.png"));
    assert!(matches!(
        read_tuxpaint([]),
        Err(DataError::Malformed { .. })
    ));
}
