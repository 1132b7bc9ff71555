//! From a [`DataSet`] to batches: decoding, class-balanced oversampling, augmentation of
//! the high-resolution image *before* downsampling (so the Teacher and the Student see the
//! same view), area-average downsampling ([`crate::wsi::resize_area`], the slide reader's
//! filter) and normalisation to a `[n, 3, s, s]` tensor.

use anyhow::Result;
use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::dataset::{DataSet, Split, load_image};
use crate::export::ExportInfo;
use crate::wsi::resize_area;

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

/// Decodes every sample and area-averages it to `base_size`² (a non-square image is
/// centre-cropped to a square first).
pub fn load_splits(data: &DataSet, base_size: u32) -> Result<Splits> {
    let load = |split: Split| -> Result<ImageSet> {
        let mut set = ImageSet::default();
        for s in data.split(split) {
            let img = load_image(&s.path)?;
            set.images.push(to_square(&img, base_size));
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

/// A random view of a high-resolution patch: one of the 8 flips/rotations (tissue has no
/// orientation) and a mild per-channel brightness/contrast jitter (stain variation).
pub fn augment(img: &RgbImage, rng: &mut StdRng) -> RgbImage {
    use image::imageops::{flip_horizontal, rotate90, rotate180, rotate270};
    let mut out = match rng.random_range(0..4) {
        0 => img.clone(),
        1 => rotate90(img),
        2 => rotate180(img),
        _ => rotate270(img),
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
    out
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
