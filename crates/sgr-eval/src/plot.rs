//! PNG figures with plotters: line charts with titles, axis labels and legends; covariance heat maps; image
//! grids with captions. Text uses the DejaVu Sans font compiled into the crate (no system fonts needed).

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::{EvalError, Result};

const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

fn init_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font checked in with the crate; a failure here would show as
        // missing text, never as a crash.
        let _ = register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

fn plot_err(path: &Path, e: impl std::fmt::Debug) -> EvalError {
    EvalError::Plot {
        path: path.display().to_string(),
        message: format!("{e:?}"),
    }
}

/// A categorical palette (Tableau 10), readable on white.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart: title, axis labels, lines, and the y range (x range from the data).
#[derive(Clone, Debug)]
pub struct LinePanel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub y_range: (f64, f64),
    /// Draw the legend (with many panels, one legend is enough).
    pub legend: bool,
}

fn x_range(series: &[Series]) -> (f64, f64) {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    if !lo.is_finite() || !hi.is_finite() {
        (0.0, 1.0)
    } else if hi > lo {
        (lo, hi)
    } else {
        (lo - 0.5, hi + 0.5)
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    p: &LinePanel,
) -> std::result::Result<(), String> {
    let (x0, x1) = x_range(&p.series);
    // Long titles get a smaller font so that they fit the panel.
    let (w, _) = area.dim_in_pixel();
    let size = (20.0f64)
        .min(1.9 * f64::from(w) / p.title.chars().count().max(1) as f64)
        .max(11.0);
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FONT, size))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(x0..x1, p.y_range.0..p.y_range.1)
        .map_err(|e| format!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc(p.x_label.as_str())
        .y_desc(p.y_label.as_str())
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| format!("{e:?}"))?;
    for (i, s) in p.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let style = ShapeStyle::from(&color).stroke_width(2);
        let drawn = chart
            .draw_series(LineSeries::new(s.points.iter().copied(), style))
            .map_err(|e| format!("{e:?}"))?;
        if p.legend {
            drawn.label(s.label.as_str()).legend(move |(x, y)| {
                PathElement::new(
                    vec![(x, y), (x + 20, y)],
                    ShapeStyle::from(&color).stroke_width(2),
                )
            });
        }
        if s.points.len() <= 20 {
            chart
                .draw_series(
                    s.points
                        .iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
                )
                .map_err(|e| format!("{e:?}"))?;
        }
    }
    if p.legend {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .position(SeriesLabelPosition::LowerLeft)
            .draw()
            .map_err(|e| format!("{e:?}"))?;
    }
    Ok(())
}

/// Line charts in a grid of `cols` columns, under an overall `title` (empty: none).
pub fn line_panels(path: &Path, title: &str, panels: &[LinePanel], cols: usize) -> Result<()> {
    init_font();
    let cols = cols.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(cols).max(1);
    let (pw, ph) = (640u32, 440u32);
    let top = if title.is_empty() { 0 } else { 40 };
    let root =
        BitMapBackend::new(path, (pw * cols as u32, ph * rows as u32 + top)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let body = if title.is_empty() {
        root.clone()
    } else {
        root.titled(title, (FONT, 24))
            .map_err(|e| plot_err(path, e))?
    };
    for (area, p) in body.split_evenly((rows, cols)).iter().zip(panels) {
        draw_panel(area, p).map_err(|e| plot_err(path, e))?;
    }
    root.present().map_err(|e| plot_err(path, e))
}

/// A single line chart.
pub fn line_chart(path: &Path, panel: &LinePanel) -> Result<()> {
    line_panels(path, "", std::slice::from_ref(panel), 1)
}

/// A square matrix to show as a heat map.
#[derive(Clone, Debug)]
pub struct Heatmap {
    pub title: String,
    /// Row-major `n × n` values.
    pub values: Vec<f64>,
    pub n: usize,
}

/// Diverging colour map for `v ∈ [−1, 1]`: blue, white, red.
pub fn diverging(v: f64) -> RGBColor {
    let v = v.clamp(-1.0, 1.0);
    let (r, g, b) = if v >= 0.0 {
        (1.0, 1.0 - v, 1.0 - v)
    } else {
        (1.0 + v, 1.0 + v, 1.0)
    };
    RGBColor(
        (r * 255.0) as u8,
        (g * 255.0 * 0.95 + 12.0 * (1.0 - g)) as u8,
        (b * 255.0) as u8,
    )
}

/// Heat maps side by side, each rescaled so its largest absolute entry is 1 (as in the paper's Fig. 1),
/// with a colour bar from −1 to 1.
pub fn heatmaps(path: &Path, title: &str, maps: &[Heatmap]) -> Result<()> {
    init_font();
    let cell = 360u32;
    let (w, h) = (cell * maps.len().max(1) as u32 + 90, cell + 90);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let body = root
        .titled(title, (FONT, 22))
        .map_err(|e| plot_err(path, e))?;
    let (panels, bar) = body.split_horizontally(cell * maps.len().max(1) as u32);
    for (area, m) in panels.split_evenly((1, maps.len().max(1))).iter().zip(maps) {
        let area = area
            .titled(&m.title, (FONT, 16))
            .map_err(|e| plot_err(path, e))?;
        let (aw, ah) = area.dim_in_pixel();
        let side = aw.min(ah).saturating_sub(10).max(1);
        let scale = m
            .values
            .iter()
            .fold(0f64, |a, &v| a.max(v.abs()))
            .max(1e-300);
        for py in 0..side {
            for px in 0..side {
                let i = (py as usize * m.n / side as usize).min(m.n.saturating_sub(1));
                let j = (px as usize * m.n / side as usize).min(m.n.saturating_sub(1));
                let v = m.values.get(i * m.n + j).copied().unwrap_or(0.0) / scale;
                area.draw_pixel((px as i32 + 5, py as i32), &diverging(v))
                    .map_err(|e| plot_err(path, e))?;
            }
        }
    }
    // Colour bar.
    let (_, bh) = bar.dim_in_pixel();
    let bar_h = bh.saturating_sub(60).max(10) as i32;
    for y in 0..bar_h {
        let v = 1.0 - 2.0 * y as f64 / (bar_h - 1).max(1) as f64;
        bar.draw(&Rectangle::new(
            [(15, 20 + y), (35, 21 + y)],
            diverging(v).filled(),
        ))
        .map_err(|e| plot_err(path, e))?;
    }
    for (label, y) in [("1", 20), ("0", 20 + bar_h / 2), ("-1", 20 + bar_h - 1)] {
        bar.draw(&Text::new(label, (40, y - 7), (FONT, 14)))
            .map_err(|e| plot_err(path, e))?;
    }
    root.present().map_err(|e| plot_err(path, e))
}

/// An image `(C, H, W)` with values in `[0, 1]` (C = 1 grey or 3 RGB) and a caption under it.
#[derive(Clone, Debug)]
pub struct Tile {
    pub pixels: Vec<f32>,
    pub shape: (usize, usize, usize),
    pub caption: String,
}

/// A grid of images: one row per `(row label, tiles)`, under `title`.
pub fn image_grid(path: &Path, title: &str, rows: &[(String, Vec<Tile>)]) -> Result<()> {
    init_font();
    let cols = rows.iter().map(|r| r.1.len()).max().unwrap_or(1).max(1);
    let (_, h, w) = rows
        .iter()
        .flat_map(|r| r.1.first())
        .next()
        .map_or((1, 28, 28), |t| t.shape);
    let scale = (84 / h.max(w)).max(1) as u32;
    let (tw, th) = (w as u32 * scale + 8, h as u32 * scale + 24);
    let label_w = 150u32;
    let root = BitMapBackend::new(
        path,
        (label_w + tw * cols as u32, th * rows.len() as u32 + 40),
    )
    .into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let body = root
        .titled(title, (FONT, 20))
        .map_err(|e| plot_err(path, e))?;
    for (r, (label, tiles)) in rows.iter().enumerate() {
        let y0 = r as i32 * th as i32;
        body.draw(&Text::new(
            label.as_str(),
            (5, y0 + th as i32 / 2 - 8),
            (FONT, 14),
        ))
        .map_err(|e| plot_err(path, e))?;
        for (c, t) in tiles.iter().enumerate() {
            let x0 = label_w as i32 + c as i32 * tw as i32 + 4;
            let (ch, ih, iw) = t.shape;
            for yy in 0..ih {
                for xx in 0..iw {
                    let px = |k: usize| {
                        (t.pixels[(k.min(ch - 1) * ih + yy) * iw + xx].clamp(0.0, 1.0) * 255.0)
                            as u8
                    };
                    let color = RGBColor(px(0), px(1), px(2));
                    let (x, y) = (
                        x0 + (xx as u32 * scale) as i32,
                        y0 + (yy as u32 * scale) as i32,
                    );
                    body.draw(&Rectangle::new(
                        [(x, y), (x + scale as i32, y + scale as i32)],
                        color.filled(),
                    ))
                    .map_err(|e| plot_err(path, e))?;
                }
            }
            body.draw(&Text::new(
                t.caption.as_str(),
                (x0, y0 + (ih as u32 * scale) as i32 + 3),
                (FONT, 13),
            ))
            .map_err(|e| plot_err(path, e))?;
        }
    }
    root.present().map_err(|e| plot_err(path, e))
}
