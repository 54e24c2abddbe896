//! `madeit plots`: SVG figures of a run's `results.json` (also written by `madeit run`).
//!
//! - `accuracy_matrix_<label>.svg`, one per method: the accuracy matrix of its first task
//!   order as a heat map (row `i`: the `i`-th task of the order; column `j`: after merging
//!   `j` tasks; cells in percent, blank where not computed).
//! - `seen_accuracy.svg`: the average accuracy over the tasks seen so far after each step,
//!   one curve per method (mean over the orders, shaded ± one standard deviation), with the
//!   pretrained and fine-tuned averages as dashed references. Needs the full matrix.

use std::path::{Path, PathBuf};

use anyhow::Context;
use madeit::eval::ExperimentResults;
use madeit::eval::report::display_name;
use madeit::params::fs::write_atomic;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Arguments of `madeit plots`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A `results.json` written by `madeit run`.
    #[arg(long)]
    pub results: PathBuf,
    /// Output folder (default: `plots/` beside the results file).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Renders the figures of `args.results`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let results = ExperimentResults::load_json(&args.results)?;
    let out = args.out.clone().unwrap_or_else(|| {
        args.results
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("plots")
    });
    for f in write_all(&results, &out)? {
        println!("{}", f.display());
    }
    Ok(())
}

fn plot_err<E: std::fmt::Display>(path: &Path) -> impl FnOnce(E) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("drawing {}: {e}", path.display())
}

/// A file-name-safe version of a label.
fn file_safe(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes every figure into `dir`; returns the files.
pub fn write_all(results: &ExperimentResults, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = Vec::new();
    for s in &results.summaries {
        let Some(stream) = results.streams_of(&s.label).next() else {
            continue;
        };
        let path = dir.join(format!("accuracy_matrix_{}.svg", file_safe(&s.label)));
        let seed = stream
            .seed
            .map_or_else(String::new, |x| format!(", order of seed {x}"));
        let title = format!("{}: accuracy (%){seed}", display_name(&s.method));
        heatmap(&path, &title, &stream.order, &stream.matrix.rows())?;
        files.push(path);
    }
    if results.summaries.iter().all(|s| s.seen_accuracy.is_some()) && !results.summaries.is_empty()
    {
        let path = dir.join("seen_accuracy.svg");
        seen_curves(&path, results)?;
        files.push(path);
    }
    Ok(files)
}

/// A perceptually ordered colour for `x` in `[0, 1]` (viridis, linearly interpolated
/// between five stops).
fn viridis(x: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let x = x.clamp(0.0, 1.0) * 4.0;
    let k = (x.floor() as usize).min(3);
    let t = x - k as f64;
    let (a, b) = (STOPS[k], STOPS[k + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * t).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Draws an accuracy matrix (`rows[i][j]` = accuracy of task `i` after step `j`) as a heat
/// map with the values printed in the cells.
pub fn heatmap(
    path: &Path,
    title: &str,
    tasks: &[String],
    rows: &[Vec<Option<f64>>],
) -> anyhow::Result<()> {
    let n = rows.len() as i32;
    let (cell_w, cell_h, left, top) = (56i32, 32i32, 190i32, 60i32);
    let width = (left + n * cell_w + 20) as u32;
    let height = (top + n * cell_h + 50) as u32;
    let mut svg = String::new();
    let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err(path))?;
    let font = |size: i32| ("sans-serif", size).into_font();
    root.draw(&Text::new(title.to_owned(), (10, 12), font(16)))
        .map_err(plot_err(path))?;
    let centred = TextStyle::from(font(12)).pos(Pos::new(HPos::Center, VPos::Center));
    let right = TextStyle::from(font(12)).pos(Pos::new(HPos::Right, VPos::Center));
    for (i, row) in rows.iter().enumerate() {
        let y0 = top + i as i32 * cell_h;
        let name = tasks.get(i).cloned().unwrap_or_default();
        root.draw(&Text::new(name, (left - 8, y0 + cell_h / 2), right.clone()))
            .map_err(plot_err(path))?;
        for (j, v) in row.iter().enumerate() {
            let x0 = left + j as i32 * cell_w;
            let fill = v.map_or(RGBColor(245, 245, 245), viridis);
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + cell_w - 1, y0 + cell_h - 1)],
                fill.filled(),
            ))
            .map_err(plot_err(path))?;
            if let Some(a) = v {
                let ink = if *a < 0.6 { &WHITE } else { &BLACK };
                root.draw(&Text::new(
                    format!("{:.1}", 100.0 * a),
                    (x0 + cell_w / 2, y0 + cell_h / 2),
                    centred.color(ink),
                ))
                .map_err(plot_err(path))?;
            }
        }
    }
    let bottom = top + n * cell_h;
    for j in 0..n {
        root.draw(&Text::new(
            format!("{}", j + 1),
            (left + j * cell_w + cell_w / 2, bottom + 12),
            centred.clone(),
        ))
        .map_err(plot_err(path))?;
    }
    root.draw(&Text::new(
        "tasks merged".to_owned(),
        (left + n * cell_w / 2, bottom + 34),
        centred.clone(),
    ))
    .map_err(plot_err(path))?;
    root.present().map_err(plot_err(path))?;
    drop(root);
    write_atomic(path, svg.as_bytes())?;
    Ok(())
}

/// Draws the seen-task accuracy per step, one curve per method (see the module docs).
pub fn seen_curves(path: &Path, results: &ExperimentResults) -> anyhow::Result<()> {
    let n = results.benchmark.tasks.len();
    let mut svg = String::new();
    let root = SVGBackend::with_string(&mut svg, (760, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err(path))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Average accuracy over the tasks seen so far",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.8f64..(n as f64 + 0.2), 0f64..100f64)
        .map_err(plot_err(path))?;
    chart
        .configure_mesh()
        .x_desc("tasks merged")
        .y_desc("accuracy (%)")
        .x_labels(n)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_labels(11)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .light_line_style(WHITE)
        .draw()
        .map_err(plot_err(path))?;
    for (k, (label, value)) in [
        (
            "Fine-Tuned (individual)",
            results.references.finetuned_mean(),
        ),
        ("Pre-Trained", results.references.pretrained_mean()),
    ]
    .into_iter()
    .enumerate()
    {
        let color = if k == 0 {
            BLACK
        } else {
            RGBColor(128, 128, 128)
        };
        let y = 100.0 * value;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(1.0, y), (n as f64, y)],
                6,
                4,
                color.stroke_width(1),
            ))
            .map_err(plot_err(path))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    for (k, s) in results.summaries.iter().enumerate() {
        let Some(curve) = &s.seen_accuracy else {
            continue;
        };
        let color = Palette99::pick(k).to_rgba();
        let mean: Vec<(f64, f64)> = curve
            .iter()
            .enumerate()
            .map(|(j, m)| ((j + 1) as f64, 100.0 * m.mean))
            .collect();
        if curve.iter().all(|m| m.std.is_some()) {
            let upper = curve
                .iter()
                .enumerate()
                .map(|(j, m)| ((j + 1) as f64, 100.0 * (m.mean + m.std.unwrap_or(0.0))));
            let lower: Vec<(f64, f64)> = curve
                .iter()
                .enumerate()
                .map(|(j, m)| ((j + 1) as f64, 100.0 * (m.mean - m.std.unwrap_or(0.0))))
                .collect();
            let band: Vec<(f64, f64)> = upper.chain(lower.into_iter().rev()).collect();
            chart
                .draw_series(std::iter::once(Polygon::new(
                    band,
                    color.mix(0.15).filled(),
                )))
                .map_err(plot_err(path))?;
        }
        let name = display_name(&s.method).to_owned();
        let name = if s.label == s.method {
            name
        } else {
            format!("{name} ({})", s.label)
        };
        chart
            .draw_series(LineSeries::new(mean.clone(), color.stroke_width(2)))
            .map_err(plot_err(path))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(mean.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(plot_err(path))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(plot_err(path))?;
    root.present().map_err(plot_err(path))?;
    drop(chart);
    drop(root);
    write_atomic(path, svg.as_bytes())?;
    Ok(())
}
