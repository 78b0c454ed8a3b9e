//! Draws the comparison chart of `bench/compare`: one PNG with a panel of grouped bars per
//! measure (throughput by scenario, throughput by message size), each broker side by side.
//!
//! ```text
//! bench-chart chart.json performance.png [--font /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf]
//! ```
//! The input is what `bench/compare` writes:
//! ```text
//! {"title": "...", "panels": [{"title": "...", "unit": "msg/s", "log": false,
//!   "categories": ["1p/1c 16 B", ...],
//!   "series": [{"name": "mini-broker", "values": [363000.0, ...]}, ...]}]}
//! ```
//! A missing value (`null`) leaves its bar out. Text is drawn with a TrueType font read at run
//! time (plotters' `ab_glyph` backend: no fontconfig, no system library).

use std::error::Error;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use serde_json::Value;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Where Debian, Ubuntu and Fedora keep a sans-serif font.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Bar colours, one per series (broker).
const COLOURS: &[RGBColor] = &[
    RGBColor(0xd9, 0x5f, 0x02),
    RGBColor(0x1b, 0x9e, 0x77),
    RGBColor(0x75, 0x70, 0xb3),
    RGBColor(0xe7, 0x29, 0x8a),
];

struct Series {
    name: String,
    values: Vec<Option<f64>>,
}

struct Panel {
    title: String,
    unit: String,
    log: bool,
    categories: Vec<String>,
    series: Vec<Series>,
}

fn main() {
    if let Err(error) = run() {
        eprintln!("bench-chart: {error}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (input, output) = match args.as_slice() {
        [input, output, ..] => (input, output),
        _ => return Err("usage: bench-chart INPUT.json OUTPUT.png [--font FILE.ttf]".into()),
    };
    let font = match args.iter().position(|a| a == "--font") {
        Some(i) => args.get(i + 1).cloned().ok_or("--font needs a file")?,
        None => FONTS
            .iter()
            .find(|path| std::path::Path::new(path).exists())
            .map(|path| path.to_string())
            .ok_or("no TrueType font found; give one with --font")?,
    };
    // plotters keeps the font for the life of the program.
    let bytes: &'static [u8] = Box::leak(std::fs::read(&font)?.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{font} is not a usable TrueType font"))?;

    let document: Value = serde_json::from_str(&std::fs::read_to_string(input)?)?;
    let title = document["title"].as_str().unwrap_or("").to_owned();
    let panels = document["panels"]
        .as_array()
        .ok_or("the input has no \"panels\" array")?
        .iter()
        .map(panel)
        .collect::<Result<Vec<_>>>()?;
    if panels.is_empty() {
        return Err("nothing to draw: no panels".into());
    }
    draw(&title, &panels, output)
}

fn panel(value: &Value) -> Result<Panel> {
    let text = |key: &str| value[key].as_str().unwrap_or("").to_owned();
    let categories: Vec<String> = value["categories"]
        .as_array()
        .ok_or("a panel has no \"categories\"")?
        .iter()
        .map(|c| c.as_str().unwrap_or("?").to_owned())
        .collect();
    let series = value["series"]
        .as_array()
        .ok_or("a panel has no \"series\"")?
        .iter()
        .map(|s| Series {
            name: s["name"].as_str().unwrap_or("?").to_owned(),
            values: (0..categories.len())
                .map(|i| s["values"][i].as_f64().filter(|v| *v > 0.0))
                .collect(),
        })
        .collect();
    Ok(Panel {
        title: text("title"),
        unit: text("unit"),
        log: value["log"].as_bool().unwrap_or(false),
        categories,
        series,
    })
}

fn draw(title: &str, panels: &[Panel], output: &str) -> Result<()> {
    let width = 760 * panels.len() as u32;
    let root = BitMapBackend::new(output, (width, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 24))?;
    for (area, panel) in root.split_evenly((1, panels.len())).iter().zip(panels) {
        draw_panel(area, panel)?;
    }
    root.present()?;
    Ok(())
}

/// Compact numbers for bar labels: 363k, 1.2M, 456.
fn short(value: f64) -> String {
    let whole = |v: f64| (v - v.round()).abs() < 1e-9;
    if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e4 || (value >= 1e3 && whole(value / 1e3)) {
        format!("{:.0}k", value / 1e3)
    } else if value >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else if value >= 10.0 || value == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let values = || {
        panel
            .series
            .iter()
            .flat_map(|s| s.values.iter().flatten().copied())
    };
    let max = values().fold(0.0f64, f64::max).max(1.0);
    let min = values().fold(f64::INFINITY, f64::min).min(max);
    let bars = panel.series.len().max(1) as f64;
    let categories = panel.categories.len() as f64;
    let x_range = 0.0..categories;
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&panel.title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(70);
    // Bars are drawn from the bottom of the axis; a log axis starts a decade under the least
    // value so the smallest bar still shows.
    if panel.log {
        let floor = 10f64.powf((min.log10() - 1.0).floor());
        let ceiling = 10f64.powf((max.log10() + 0.5).ceil());
        let mut chart = builder.build_cartesian_2d(x_range, (floor..ceiling).log_scale())?;
        fill(&mut chart, panel, bars, floor)?;
    } else {
        let mut chart = builder.build_cartesian_2d(x_range, 0.0..max * 1.3)?;
        fill(&mut chart, panel, bars, 0.0)?;
    }
    Ok(())
}

/// The grid and axes (one label under the centre of each category), the bars of every series
/// side by side within each category with their values on top, and the legend.
fn fill<'a, DB, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    panel: &Panel,
    bars: f64,
    bottom: f64,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let label_of = |x: &f64| {
        let i = x.floor() as usize;
        if (x - i as f64 - 0.5).abs() < 1e-6 {
            panel.categories.get(i).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(panel.categories.len() * 2 + 1)
        .x_label_formatter(&label_of)
        .y_desc(&panel.unit)
        .y_label_formatter(&|v| short(*v))
        .label_style(("sans-serif", 15))
        .draw()?;
    let group = 0.8;
    let width = group / bars;
    for (s, series) in panel.series.iter().enumerate() {
        let colour = COLOURS[s % COLOURS.len()];
        let left = |i: usize| i as f64 + (1.0 - group) / 2.0 + s as f64 * width;
        chart
            .draw_series(series.values.iter().enumerate().filter_map(|(i, v)| {
                v.map(|v| {
                    Rectangle::new(
                        [(left(i), bottom), (left(i) + width * 0.92, v)],
                        colour.filled(),
                    )
                })
            }))?
            .label(series.name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
        chart.draw_series(series.values.iter().enumerate().filter_map(|(i, v)| {
            v.map(|v| {
                Text::new(
                    short(v),
                    (left(i) + width * 0.1, v),
                    ("sans-serif", 13).into_font().color(&BLACK).pos(
                        plotters::style::text_anchor::Pos::new(
                            plotters::style::text_anchor::HPos::Left,
                            plotters::style::text_anchor::VPos::Bottom,
                        ),
                    ),
                )
            })
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keeps_three_digits_and_a_unit() {
        assert_eq!(short(363_412.0), "363k");
        assert_eq!(short(1_000.0), "1k");
        assert_eq!(short(1_234.0), "1.2k");
        assert_eq!(short(1_210_000.0), "1.21M");
        assert_eq!(short(456.4), "456");
        assert_eq!(short(5.84), "5.8");
        assert_eq!(short(0.0), "0");
    }

    #[test]
    fn panel_reads_missing_and_zero_values_as_absent() {
        let value: Value = serde_json::from_str(
            r#"{"title": "t", "unit": "msg/s", "log": true, "categories": ["a", "b", "c"],
                "series": [{"name": "mini-broker", "values": [1.5, null, 0]}]}"#,
        )
        .expect("valid JSON");
        let panel = panel(&value).expect("a panel");
        assert!(panel.log);
        assert_eq!(panel.categories, ["a", "b", "c"]);
        assert_eq!(panel.series[0].values, [Some(1.5), None, None]);
    }

    #[test]
    fn panel_without_categories_is_an_error() {
        let value: Value = serde_json::from_str(r#"{"series": []}"#).expect("valid JSON");
        assert!(panel(&value).is_err());
    }
}
