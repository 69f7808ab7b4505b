//! A tiny rasterizer (rectangles, lines, bitmap text, rotated text) and the
//! grouped bar chart `magpie bench` draws, saved with the PNG encoder.

use crate::font;

pub type Rgb = [u8; 3];

pub const WHITE: Rgb = [255, 255, 255];
pub const BLACK: Rgb = [0, 0, 0];
const GRID: Rgb = [225, 225, 225];
const AXIS: Rgb = [60, 60, 60];
const REFERENCE: Rgb = [20, 20, 20];

/// An RGB raster.
pub struct Canvas {
    pub w: usize,
    pub h: usize,
    px: Vec<u8>,
}

impl Canvas {
    pub fn new(w: usize, h: usize, bg: Rgb) -> Self {
        let mut px = Vec::with_capacity(w * h * 3);
        for _ in 0..w * h {
            px.extend_from_slice(&bg);
        }
        Canvas { w, h, px }
    }

    #[cfg(test)]
    pub fn get(&self, x: usize, y: usize) -> Rgb {
        let i = (y * self.w + x) * 3;
        [self.px[i], self.px[i + 1], self.px[i + 2]]
    }

    /// Sets one pixel; outside the canvas is ignored.
    pub fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    pub fn fill(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, c);
            }
        }
    }

    /// A horizontal line, `dash` pixels on and off (0: solid).
    pub fn hline(&mut self, x0: i64, x1: i64, y: i64, thick: i64, dash: i64, c: Rgb) {
        for x in x0..=x1 {
            if dash == 0 || ((x - x0) / dash) % 2 == 0 {
                self.fill(x, y, 1, thick, c);
            }
        }
    }

    pub fn vline(&mut self, x: i64, y0: i64, y1: i64, thick: i64, dash: i64, c: Rgb) {
        for y in y0..=y1 {
            if dash == 0 || ((y - y0) / dash) % 2 == 0 {
                self.fill(x, y, thick, 1, c);
            }
        }
    }

    /// Width in pixels of `s` drawn at `scale`.
    pub fn text_width(s: &str, scale: i64) -> i64 {
        let n = s.chars().count() as i64;
        if n == 0 {
            0
        } else {
            (n * font::ADVANCE as i64 - 1) * scale
        }
    }

    /// Height of a line of text (ascent, descent and spacing) at `scale`.
    pub fn line_height(scale: i64) -> i64 {
        font::LINE as i64 * scale
    }

    /// Draws `s` left to right with the top-left of its first cell at (x, y).
    pub fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        for (i, ch) in s.chars().enumerate() {
            let g = font::glyph(ch);
            let ox = x + (i * font::ADVANCE) as i64 * scale;
            for gy in 0..font::ROWS {
                for gx in 0..font::INK_W {
                    if font::ink(&g, gx, gy) {
                        self.fill(
                            ox + gx as i64 * scale,
                            y + gy as i64 * scale,
                            scale,
                            scale,
                            c,
                        );
                    }
                }
            }
        }
    }

    /// Draws `s` turned 90° counter-clockwise (reading upward); (x, y) is the
    /// bottom-left corner of the turned text, whose top is on the left.
    pub fn text_up(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        for (i, ch) in s.chars().enumerate() {
            let g = font::glyph(ch);
            for gy in 0..font::ROWS {
                for gx in 0..font::INK_W {
                    if font::ink(&g, gx, gy) {
                        let along = (i * font::ADVANCE + gx) as i64;
                        self.fill(
                            x + gy as i64 * scale,
                            y - (along + 1) * scale,
                            scale,
                            scale,
                            c,
                        );
                    }
                }
            }
        }
    }

    pub fn png(&self) -> Vec<u8> {
        crate::png::encode_rgb(self.w as u32, self.h as u32, &self.px)
    }
}

/// A grouped bar chart: one group per label, one bar per series.
pub struct BarChart {
    pub title: String,
    pub y_label: String,
    pub x_label: String,
    pub series: Vec<(String, Rgb)>,
    /// (group label, one value per series; None: no bar).
    pub groups: Vec<(String, Vec<Option<f64>>)>,
    /// A dashed line is drawn at this value.
    pub reference: f64,
    /// Groups from this index on are set apart by a dotted separator.
    pub separate_from: Option<usize>,
}

/// Values above this are clipped (drawn to the top, broken, value written).
const CLIP: f64 = 4.0;

fn tick_label(v: f64, step: f64) -> String {
    if (step * 2.0).fract().abs() < 1e-9 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn render(ch: &BarChart) -> Canvas {
    const S: i64 = 2; // text scale
    let n = ch.series.len().max(1) as i64;
    let bar_w = 14i64;
    let gap = 18i64;
    let group_w = n * bar_w + gap;
    let groups = ch.groups.len() as i64;
    let plot_h = 420i64;
    let left = 30 + Canvas::line_height(S) + Canvas::text_width("0.00", S) + 14;
    let title_y = 14;
    let legend_y = title_y + Canvas::line_height(S) + 12;
    let top = legend_y + Canvas::line_height(S) + 18;
    let max_label = ch
        .groups
        .iter()
        .map(|g| Canvas::text_width(&g.0, S))
        .max()
        .unwrap_or(0);
    let plot_w = groups * group_w + gap;
    let bottom = top + plot_h;
    let xlabel_y = bottom + 10 + max_label + 14;
    let height = xlabel_y + Canvas::line_height(S) + 10;
    let legend_w: i64 = ch
        .series
        .iter()
        .map(|s| 16 + 8 + Canvas::text_width(&s.0, S) + 24)
        .sum();
    let width = (left + plot_w + 30)
        .max(left + legend_w + 30)
        .max(Canvas::text_width(&ch.title, S) + 60);
    let mut c = Canvas::new(width as usize, height as usize, WHITE);

    // Title and legend.
    c.text(
        (width - Canvas::text_width(&ch.title, S)) / 2,
        title_y,
        &ch.title,
        S,
        BLACK,
    );
    let mut lx = left;
    for (name, color) in &ch.series {
        c.fill(lx, legend_y, 16, 16, *color);
        c.text(lx + 24, legend_y + 1, name, S, BLACK);
        lx += 16 + 8 + Canvas::text_width(name, S) + 24;
    }

    // Scale: 0 at the bottom; the top a round number above the largest value
    // (at most CLIP).
    let max = ch
        .groups
        .iter()
        .flat_map(|g| g.1.iter().flatten())
        .copied()
        .filter(|v| v.is_finite())
        .fold(ch.reference, f64::max);
    let want = (max * 1.05).min(CLIP);
    let step = [0.1, 0.2, 0.25, 0.5, 1.0]
        .into_iter()
        .find(|s| want / s <= 10.0)
        .unwrap_or(1.0);
    let top_v = ((want / step).ceil() * step).max(step);
    let y_of = |v: f64| bottom - ((v / top_v) * plot_h as f64).round() as i64;

    // Grid and tick labels.
    let mut t = 0.0;
    while t <= top_v + 1e-9 {
        let y = y_of(t);
        c.hline(left, left + plot_w, y, 1, 0, GRID);
        let lab = tick_label(t, step);
        c.text(left - 8 - Canvas::text_width(&lab, S), y - 7, &lab, S, AXIS);
        t += step;
    }

    // Bars.
    for (gi, (_, vals)) in ch.groups.iter().enumerate() {
        let gx = left + gap + gi as i64 * group_w;
        for (si, v) in vals.iter().enumerate().take(n as usize) {
            let Some(v) = v.filter(|v| v.is_finite() && *v >= 0.0) else {
                continue;
            };
            let color = ch.series[si].1;
            let x = gx + si as i64 * bar_w;
            let clipped = v > top_v;
            let y = y_of(v.min(top_v));
            c.fill(x, y, bar_w - 1, bottom - y, color);
            if clipped {
                // A break near the top and the value written down the bar.
                c.fill(x, top + 6, bar_w - 1, 2, WHITE);
                c.fill(x, top + 10, bar_w - 1, 2, WHITE);
                let lab = format!("{v:.1}");
                let tw = Canvas::text_width(&lab, 1);
                c.text_up(x + 3, top + 16 + tw, &lab, 1, WHITE);
            }
        }
    }

    // Separator before the summary groups.
    if let Some(i) = ch.separate_from.filter(|&i| i > 0 && i < ch.groups.len()) {
        let x = left + i as i64 * group_w + gap / 2;
        c.vline(x, top, bottom, 1, 3, AXIS);
    }

    // Reference line, axes, labels.
    c.hline(left, left + plot_w, y_of(ch.reference), 2, 6, REFERENCE);
    c.vline(left, top, bottom, 2, 0, AXIS);
    c.hline(left, left + plot_w, bottom, 2, 0, AXIS);
    for (gi, (label, _)) in ch.groups.iter().enumerate() {
        let cx = left + gap + gi as i64 * group_w + (n * bar_w) / 2;
        let tw = Canvas::text_width(label, S);
        c.text_up(cx - 9, bottom + 10 + tw, label, S, BLACK);
    }
    c.text(
        left + (plot_w - Canvas::text_width(&ch.x_label, S)) / 2,
        xlabel_y,
        &ch.x_label,
        S,
        BLACK,
    );
    let yl = Canvas::text_width(&ch.y_label, S);
    c.text_up(10, top + (plot_h + yl) / 2, &ch.y_label, S, BLACK);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lands_where_asked() {
        let mut c = Canvas::new(40, 20, WHITE);
        c.text(1, 1, "I", 1, BLACK);
        // 'I' = ".###." on its first row.
        assert_eq!(c.get(1, 1), WHITE);
        assert_eq!(c.get(2, 1), BLACK);
        assert_eq!(c.get(4, 1), BLACK);
        assert_eq!(c.get(5, 1), WHITE);
        let mut u = Canvas::new(20, 40, WHITE);
        u.text_up(1, 30, "I", 1, BLACK);
        // Turned: the first row becomes the left column, read upward.
        assert_eq!(u.get(1, 29), WHITE);
        assert_eq!(u.get(1, 28), BLACK);
        assert_eq!(u.get(1, 26), BLACK);
        assert_eq!(u.get(1, 25), WHITE);
    }

    #[test]
    fn chart_renders() {
        let ch = BarChart {
            title: "t".into(),
            y_label: "y".into(),
            x_label: "x".into(),
            series: vec![("a".into(), [200, 0, 0]), ("b".into(), [0, 0, 200])],
            groups: vec![
                ("g1".into(), vec![Some(1.0), Some(0.5)]),
                ("g2".into(), vec![Some(9.0), None]),
            ],
            reference: 1.0,
            separate_from: Some(1),
        };
        let c = render(&ch);
        let png = c.png();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
}
