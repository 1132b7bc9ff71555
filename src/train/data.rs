//! From a [`DataSet`] to batches: decoding, resizing by the data's stated µm/px,
//! class-balanced oversampling, augmentation of the high-resolution image *before*
//! downsampling (so the Teacher and the Student see the same view), the Student's copy as
//! the slide reader would deliver it ([`StudentRead`]), and normalisation to a
//! `[n, 3, s, s]` tensor.

use anyhow::Result;
use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::build::export::ExportInfo;
use crate::dataset::{DataSet, Split, load_image};
use crate::slide::resize_area;

/// Decoded images of one split, all `base_size`² (the highest resolution any model uses).
#[derive(Debug, Clone, Default)]
pub struct ImageSet {
    pub images: Vec<RgbImage>,
    pub labels: Vec<usize>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}

/// Train, validation and test images.
#[derive(Debug, Clone, Default)]
pub struct Splits {
    pub train: ImageSet,
    pub val: ImageSet,
    pub test: ImageSet,
}

/// Decodes every sample and brings it to the Teacher's µm/px.
///
/// - `scale = None`: each image is taken to cover the Teacher's field exactly; it is
///   centre-cropped to a square and area-averaged to `base_size`² (the synthetic set,
///   SICAPv2 at a stated magnification).
/// - `scale = Some(data_mpp / teacher_mpp)`: each image is resized by that factor (a
///   750 px patch at 0.23 µm/px becomes 173 px at 1 µm/px). Training images keep their
///   whole field, so that [`augment`] can crop a different `base_size` window each time;
///   validation and test images are centre-cropped to `base_size`².
pub fn load_splits(data: &DataSet, base_size: u32, scale: Option<f64>) -> Result<Splits> {
    let load = |split: Split| -> Result<ImageSet> {
        let mut set = ImageSet::default();
        for s in data.split(split) {
            let img = load_image(&s.path)?;
            let img = match scale {
                None => to_square(&img, base_size),
                Some(f) => {
                    let (w, h) = img.dimensions();
                    let side = ((f64::from(w.min(h)) * f).round() as u32).max(base_size);
                    let field = to_square(&img, side);
                    if split == Split::Train {
                        field
                    } else {
                        centre_crop(&field, base_size)
                    }
                }
            };
            set.images.push(img);
            set.labels.push(s.label);
        }
        Ok(set)
    };
    Ok(Splits {
        train: load(Split::Train)?,
        val: load(Split::Val)?,
        test: load(Split::Test)?,
    })
}

/// The central `size`² window of `img` (the whole image, resized, if it is smaller).
pub fn centre_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if w < size || h < size {
        return resize_area(img, size, size);
    }
    image::imageops::crop_imm(img, (w - size) / 2, (h - size) / 2, size, size).to_image()
}

/// Centre square crop, then area-average resize to `size`².
pub fn to_square(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let side = w.min(h);
    let cropped = if w == h {
        img.clone()
    } else {
        image::imageops::crop_imm(img, (w - side) / 2, (h - side) / 2, side, side).to_image()
    };
    resize_area(&cropped, size, size)
}

/// Indices of one epoch: every class oversampled (with replacement) to the size of the
/// largest class, shuffled.
pub fn balanced_epoch(labels: &[usize], classes: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l].push(i);
    }
    let largest = by_class.iter().map(Vec::len).max().unwrap_or(0);
    let mut order = Vec::with_capacity(largest * classes);
    for members in by_class.iter().filter(|m| !m.is_empty()) {
        let mut shuffled = members.clone();
        shuffled.shuffle(rng);
        order.extend(shuffled.iter().copied());
        for _ in members.len()..largest {
            order.push(members[rng.random_range(0..members.len())]);
        }
    }
    order.shuffle(rng);
    order
}

/// How training views are drawn from a high-resolution image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    /// HED stain jitter (Tellez et al. 2018): each stain's concentration is scaled by
    /// `1 ± σ` and shifted by `± σ`. 0 turns it off.
    pub hed_sigma: f32,
    /// Scale jitter: the crop side is `size · s` with `s` uniform in `[1 − j, 1 + j]`
    /// (clamped to the image), resized to `size`. 0 turns it off.
    pub scale_jitter: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            hed_sigma: 0.05,
            scale_jitter: 0.0,
        }
    }
}

/// A random `size`² view of a high-resolution image: a crop (anywhere, at a jittered
/// scale) when the image is larger than `size`, one of the 8 flips/rotations (tissue has
/// no orientation), a mild per-channel brightness/contrast jitter, and HED stain jitter.
pub fn augment(img: &RgbImage, size: u32, cfg: &AugmentConfig, rng: &mut StdRng) -> RgbImage {
    use image::imageops::{flip_horizontal, rotate90, rotate180, rotate270};
    let (w, h) = img.dimensions();
    let jitter = f64::from(cfg.scale_jitter.clamp(0.0, 0.9));
    let s = if jitter > 0.0 {
        rng.random_range(1.0 - jitter..=1.0 + jitter)
    } else {
        1.0
    };
    let crop = ((f64::from(size) * s).round() as u32).clamp(1, w.min(h));
    let x = rng.random_range(0..=w - crop);
    let y = rng.random_range(0..=h - crop);
    let window = if (crop, crop) == (w, h) {
        img.clone()
    } else {
        image::imageops::crop_imm(img, x, y, crop, crop).to_image()
    };
    let sized = resize_area(&window, size, size);
    let mut out = match rng.random_range(0..4) {
        0 => sized,
        1 => rotate90(&sized),
        2 => rotate180(&sized),
        _ => rotate270(&sized),
    };
    if rng.random_bool(0.5) {
        out = flip_horizontal(&out);
    }
    let gain: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.92..1.08));
    let shift: [f32; 3] = std::array::from_fn(|_| rng.random_range(-8.0..8.0));
    for p in out.pixels_mut() {
        for c in 0..3 {
            p.0[c] = (p.0[c] as f32 * gain[c] + shift[c])
                .round()
                .clamp(0.0, 255.0) as u8;
        }
    }
    if cfg.hed_sigma > 0.0 {
        let sigma = cfg.hed_sigma;
        let alpha: [f32; 3] = std::array::from_fn(|_| rng.random_range(1.0 - sigma..=1.0 + sigma));
        let beta: [f32; 3] = std::array::from_fn(|_| rng.random_range(-sigma..=sigma));
        hed_jitter(&mut out, alpha, beta);
    }
    out
}

/// Ruifrok and Johnston's stain vectors (rows: haematoxylin, eosin, DAB) in optical
/// density, as scikit-image's `rgb_from_hed`, and their inverse.
const RGB_FROM_HED: [[f32; 3]; 3] = [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]];
const HED_FROM_RGB: [[f32; 3]; 3] = [
    [1.877_982_7, -1.007_678_7, -0.556_115_8],
    [-0.065_908_06, 1.134_730_4, -0.135_521_8],
    [-0.601_907_4, -0.480_414_2, 1.573_588],
];

/// Scales and shifts each stain's concentration: colour deconvolution into H, E and D
/// (optical density times [`HED_FROM_RGB`]), `c·α + β`, and back. With `α = 1, β = 0`
/// it returns the image up to rounding.
pub fn hed_jitter(img: &mut RgbImage, alpha: [f32; 3], beta: [f32; 3]) {
    // Optical density of each 8-bit value; 0 is treated as 1 so that it stays finite.
    let od: Vec<f32> = (0..256u32)
        .map(|v| -((v.max(1) as f32) / 255.0).ln())
        .collect();
    for p in img.pixels_mut() {
        let d = [
            od[p.0[0] as usize],
            od[p.0[1] as usize],
            od[p.0[2] as usize],
        ];
        let mut conc = [0f32; 3];
        for (s, c) in conc.iter_mut().enumerate() {
            let v: f32 = (0..3).map(|k| d[k] * HED_FROM_RGB[k][s]).sum();
            *c = v * alpha[s] + beta[s];
        }
        for (k, channel) in p.0.iter_mut().enumerate() {
            let o: f32 = (0..3).map(|s| conc[s] * RGB_FROM_HED[s][k]).sum();
            *channel = (255.0 * (-o).exp()).round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// How a Student's training copy of a view is made from the Teacher's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StudentRead {
    /// Area average of the Teacher's view (how patch data sets are made).
    Area,
    /// What grading reads from a slide ([`pyramid_read`]): the pyramid level at or below
    /// the Student's µm/px, stored as JPEG, then area-averaged to the Student's size.
    Pyramid,
    /// Half the views each way, so that a Student handles both paths.
    #[default]
    Mixed,
}

/// The Student's copy of a Teacher view, as [`StudentRead`] says. `rng` draws the path of
/// a `Mixed` read and the JPEG quality of a pyramid read.
pub fn student_view(view: &RgbImage, size: u32, read: StudentRead, rng: &mut StdRng) -> RgbImage {
    let pyramid = match read {
        StudentRead::Area => false,
        StudentRead::Pyramid => true,
        StudentRead::Mixed => rng.random_bool(0.5),
    };
    if pyramid {
        let quality = rng.random_range(PYRAMID_JPEG_QUALITY.0..=PYRAMID_JPEG_QUALITY.1);
        pyramid_read(view, size, quality)
    } else {
        resize_area(view, size, size)
    }
}

/// JPEG qualities of a simulated scanner pyramid (Aperio writes 70 by default, our
/// synthetic slides 90).
pub const PYRAMID_JPEG_QUALITY: (u8, u8) = (70, 95);

/// Emulates grading's read of a `size`² field from a slide whose pyramid levels step by 4
/// from the view's resolution (as in `slidegrade synth-slide` and most scanners): the
/// level at or below the target resolution is the area average of the view, encoded as
/// JPEG at `quality`; the reader decodes it and area-averages the rest of the way. (For
/// 4× the target is a level itself; for 2× and 8× one more 2× area average follows.)
pub fn pyramid_read(view: &RgbImage, size: u32, quality: u8) -> RgbImage {
    let side = view.width().max(1);
    let mut level = side;
    while level / 4 >= size && level.is_multiple_of(4) {
        level /= 4;
    }
    let stored = resize_area(view, level, level);
    let mut jpeg = Vec::new();
    let decoded = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, quality)
        .encode_image(&stored)
        .ok()
        .and_then(|()| image::load_from_memory(&jpeg).ok())
        .map(|img| img.to_rgb8());
    // Encoding an in-memory RGB image cannot fail; if it ever did, the area path is the
    // honest fallback (the pixels stay a valid view).
    let level_img = decoded.unwrap_or(stored);
    resize_area(&level_img, size, size)
}

/// Area-averages each image to `size`² and normalises it like the exported model's input
/// (`(x/255 − mean)/std`, ImageNet statistics): `[n, 3, size, size]`.
pub fn to_tensor(images: &[&RgbImage], size: u32, device: &Device) -> Tensor<4> {
    let s = size as usize;
    let mut data = Vec::with_capacity(images.len() * 3 * s * s);
    let (mean, std) = (ExportInfo::IMAGENET_MEAN, ExportInfo::IMAGENET_STD);
    for img in images {
        let small = if img.dimensions() == (size, size) {
            (*img).clone()
        } else {
            resize_area(img, size, size)
        };
        for c in 0..3 {
            data.extend(
                small
                    .pixels()
                    .map(|p| (p.0[c] as f32 / 255.0 - mean[c]) / std[c]),
            );
        }
    }
    Tensor::from_data(TensorData::new(data, [images.len(), 3, s, s]), device)
}

/// One-hot `[n, classes]` targets.
pub fn one_hot(labels: &[usize], classes: usize, device: &Device) -> Tensor<2> {
    let mut data = vec![0.0f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        data[i * classes + l] = 1.0;
    }
    Tensor::from_data(TensorData::new(data, [labels.len(), classes]), device)
}

/// A seeded RNG for `(seed, stream, epoch)`, so that a resumed run draws the same batches.
pub fn rng_for(seed: u64, stream: u64, epoch: u64) -> StdRng {
    StdRng::seed_from_u64(
        seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ stream.rotate_left(17) ^ epoch.rotate_left(41),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn texture(side: u32) -> RgbImage {
        RgbImage::from_fn(side, side, |x, y| {
            Rgb([
                (100 + (x * 7 + y * 3) % 120) as u8,
                (60 + (x * 5) % 90) as u8,
                (150 + (y * 11) % 100) as u8,
            ])
        })
    }

    #[test]
    fn hed_jitter_is_the_identity_at_unit_gain_and_moves_stain_otherwise() {
        let orig = texture(16);
        let mut same = orig.clone();
        hed_jitter(&mut same, [1.0; 3], [0.0; 3]);
        for (a, b) in orig.pixels().zip(same.pixels()) {
            for c in 0..3 {
                assert!(a.0[c].abs_diff(b.0[c]) <= 1, "{a:?} vs {b:?}");
            }
        }
        // More haematoxylin darkens red most (haematoxylin absorbs red light most).
        let mut more_h = orig.clone();
        hed_jitter(&mut more_h, [1.3, 1.0, 1.0], [0.1, 0.0, 0.0]);
        let mean = |img: &RgbImage, c: usize| {
            img.pixels().map(|p| f64::from(p.0[c])).sum::<f64>()
                / f64::from(img.width() * img.height())
        };
        assert!(mean(&more_h, 0) < mean(&orig, 0) - 5.0);
        assert!(mean(&more_h, 0) - mean(&orig, 0) < mean(&more_h, 2) - mean(&orig, 2));
    }

    #[test]
    fn augment_crops_a_window_of_the_asked_size() {
        let img = texture(173);
        let mut rng = rng_for(1, 2, 3);
        let plain = AugmentConfig {
            hed_sigma: 0.0,
            scale_jitter: 0.0,
        };
        let jittered = AugmentConfig {
            hed_sigma: 0.05,
            scale_jitter: 0.2,
        };
        for cfg in [plain, jittered] {
            for _ in 0..20 {
                assert_eq!(augment(&img, 128, &cfg, &mut rng).dimensions(), (128, 128));
            }
        }
        // An image of exactly the asked size is used whole.
        let small = texture(32);
        assert_eq!(augment(&small, 32, &plain, &mut rng).dimensions(), (32, 32));
    }

    #[test]
    fn a_pyramid_read_differs_from_the_area_average_only_by_jpeg() {
        let view = texture(128);
        for size in [64, 32, 16] {
            let area = resize_area(&view, size, size);
            let best = pyramid_read(&view, size, 100);
            let worst = pyramid_read(&view, size, 50);
            assert_eq!(best.dimensions(), (size, size));
            let mad = |a: &RgbImage, b: &RgbImage| {
                a.as_raw()
                    .iter()
                    .zip(b.as_raw())
                    .map(|(x, y)| f64::from(x.abs_diff(*y)))
                    .sum::<f64>()
                    / a.as_raw().len() as f64
            };
            assert!(mad(&area, &best) < 2.0, "{size}: {}", mad(&area, &best));
            assert!(
                mad(&area, &worst) > mad(&area, &best),
                "{size}: lower quality, more loss"
            );
        }
        // Mixed reads take both paths.
        let mut rng = rng_for(4, 5, 6);
        let area = resize_area(&view, 32, 32);
        let outcomes: Vec<bool> = (0..40)
            .map(|_| student_view(&view, 32, StudentRead::Mixed, &mut rng) == area)
            .collect();
        assert!(outcomes.iter().any(|&b| b) && outcomes.iter().any(|&b| !b));
    }
}
