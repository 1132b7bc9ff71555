//! Training-curve and confusion-matrix PNGs, drawn with plotters on a bitmap buffer. Text
//! uses DejaVu Sans embedded by the `dejavu` crate (no system fonts are read); the PNG is
//! encoded by the `image` crate.

use std::path::Path;
use std::sync::Once;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::history::EpochLog;
use crate::dataset::scores::ConfusionMatrix;
use crate::synth::Class;

/// A curve: legend label, colour, and the value it plots per epoch.
type Series = (&'static str, RGBColor, fn(&EpochLog) -> f64);

const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Registration only fails on a malformed font, and this one is embedded.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

fn save(buffer: Vec<u8>, w: u32, h: u32, path: &Path) -> Result<()> {
    let img = image::RgbImage::from_raw(w, h, buffer).context("plot buffer has the wrong size")?;
    img.save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

/// Left: training loss per epoch. Right: validation balanced accuracy, QWK and macro F1.
pub fn training_curves(history: &[EpochLog], title: &str, path: &Path) -> Result<()> {
    register_font();
    let (w, h) = (900u32, 380u32);
    let mut buffer = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(title, (FONT, 18)).map_err(err)?;
        let (left, right) = root.split_horizontally(w / 2);
        let epochs = history.len().max(1) as f64;
        let max_loss = history
            .iter()
            .map(|e| e.loss)
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            .max(1e-3);
        let mut chart = ChartBuilder::on(&left)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .caption("training loss", (FONT, 14))
            .build_cartesian_2d(0.5f64..epochs + 0.5, 0f64..max_loss * 1.1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .label_style((FONT, 12))
            .draw()
            .map_err(err)?;
        let series: [Series; 5] = [
            ("total", BLACK, |e| e.loss),
            ("CE", BLUE, |e| e.ce),
            ("KD", GREEN, |e| e.kd),
            ("FM", MAGENTA, |e| e.fm),
            ("AT+", RED, |e| e.at_plus),
        ];
        for (name, colour, f) in series {
            if history.iter().all(|e| f(e) == 0.0) {
                continue;
            }
            chart
                .draw_series(LineSeries::new(
                    history.iter().map(|e| (e.epoch as f64, f(e))),
                    colour.stroke_width(2),
                ))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], colour));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FONT, 12))
            .draw()
            .map_err(err)?;

        let mut chart = ChartBuilder::on(&right)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .caption("validation", (FONT, 14))
            .build_cartesian_2d(0.5f64..epochs + 0.5, -0.1f64..1.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .label_style((FONT, 12))
            .draw()
            .map_err(err)?;
        let series: [Series; 3] = [
            ("balanced acc.", BLUE, |e| e.val_balanced_accuracy),
            ("QWK", RED, |e| e.val_qwk),
            ("macro F1", GREEN, |e| e.val_macro_f1),
        ];
        for (name, colour, f) in series {
            chart
                .draw_series(LineSeries::new(
                    history.iter().map(|e| (e.epoch as f64, f(e))),
                    colour.stroke_width(2),
                ))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], colour));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FONT, 12))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    save(buffer, w, h, path)
}

/// A confusion matrix: rows are the truth, columns the prediction, cells shaded by the
/// row-normalised count and labelled with the count.
pub fn confusion_matrix(cm: &ConfusionMatrix, title: &str, path: &Path) -> Result<()> {
    register_font();
    let k = cm.classes();
    let (w, h) = (420u32, 440u32);
    let mut buffer = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(title, (FONT, 16)).map_err(err)?;
        let names: Vec<String> = (0..k)
            .map(|i| Class::from_index(i).map_or(i.to_string(), |c| c.name().to_string()))
            .collect();
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0i32..k as i32, 0i32..k as i32)
            .map_err(err)?;
        let label = |v: &i32| names.get(*v as usize).cloned().unwrap_or_default();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("predicted")
            .y_desc("true")
            .x_labels(k)
            .y_labels(k)
            .x_label_formatter(&label)
            .y_label_formatter(&|v: &i32| label(&(k as i32 - 1 - v)))
            .label_style((FONT, 13))
            .draw()
            .map_err(err)?;
        for t in 0..k {
            let row: u64 = cm.matrix[t].iter().sum();
            for p in 0..k {
                let count = cm.matrix[t][p];
                let frac = if row == 0 {
                    0.0
                } else {
                    count as f64 / row as f64
                };
                let shade = (255.0 * (1.0 - 0.8 * frac)) as u8;
                let y = (k - 1 - t) as i32;
                let x = p as i32;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x, y), (x + 1, y + 1)],
                        RGBColor(shade, shade, 255).filled(),
                    )))
                    .map_err(err)?;
                let colour = if frac > 0.6 { WHITE } else { BLACK };
                chart
                    .draw_series(std::iter::once(Text::new(
                        count.to_string(),
                        (x, y + 1),
                        (FONT, 16).into_font().color(&colour),
                    )))
                    .map_err(err)?;
            }
        }
        root.present().map_err(err)?;
    }
    save(buffer, w, h, path)
}
