//! `madeit analyze`: MADE-IT's expert allocation on a zoo.
//!
//! Merges the zoo's tasks with MADE-IT in the order of one seed and writes
//! `allocation_map.svg` (rows: target modules in forward order; columns: tasks in merge
//! order; a cell's colour and label: the index of the expert of that module that serves that
//! task, so a column that shares colours with another shows consolidation), prints the
//! number of experts kept per component and layer, and writes `affinity_density.svg`: the
//! distribution over all modules of the pairwise affinities of the tasks' candidate experts
//! (one rank-r expert per task and module, as with `kappa = +inf`), by MADE-IT's subspace
//! affinity and by the cosine similarity of the flattened updates (the paper's ablation),
//! and `experts_kept.svg`: experts kept per component, one bar per layer, against one per
//! task.

use std::path::PathBuf;

use anyhow::Context;
use madeit::eval::Benchmark;
use madeit::eval::orders::task_order;
use madeit::merge::made_it::{AffinityMetric, MadeItConfig};
use madeit::merge::{ContinualMethod, MadeItMerger, Step, TaskId};
use madeit::params::fs::write_atomic;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Arguments of `madeit analyze`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Zoo folder (default: $MADEIT_ZOO or ./zoo).
    #[arg(long)]
    pub zoo: Option<PathBuf>,
    /// Seed of the task order.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// MADE-IT rank ratio (default: MadeItConfig's).
    #[arg(long)]
    pub rho: Option<f64>,
    /// MADE-IT threshold margin (default: MadeItConfig's).
    #[arg(long)]
    pub kappa: Option<f64>,
    /// Output folder.
    #[arg(long, default_value = "analysis")]
    pub out: PathBuf,
}

const PALETTE: [RGBColor; 10] = [
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

/// Runs the analysis.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let dir = args
        .zoo
        .clone()
        .unwrap_or_else(madeit::zoo::default_zoo_dir);
    let bench = Benchmark::open_zoo(&dir).with_context(|| format!("opening {}", dir.display()))?;
    let mut config = MadeItConfig::default();
    if let Some(r) = args.rho {
        config.rho = r;
    }
    if let Some(k) = args.kappa {
        config.kappa = k;
    }
    let mut merger = MadeItMerger::new(config.clone())?;
    // The same stream without consolidation keeps every task's candidate expert.
    let mut candidates = MadeItMerger::new(MadeItConfig {
        kappa: f64::INFINITY,
        ..config
    })?;
    let names = bench.task_names();
    let order: Vec<usize> = task_order(bench.num_tasks(), args.seed)
        .into_iter()
        .map(|id| id - 1)
        .collect();
    let pretrained = bench.load_pretrained()?;
    let mut ids = Vec::with_capacity(order.len());
    for &t in &order {
        let task = TaskId::new(names[t].clone());
        let ft = bench.load_finetuned(t, &pretrained)?;
        merger.absorb(&Step::new(&pretrained, &ft, &task))?;
        candidates.absorb(&Step::new(&pretrained, &ft, &task))?;
        ids.push(
            merger
                .task_id(&task)
                .context("an absorbed task has an id")?,
        );
    }
    let state = merger.experts();
    // alloc[m][j]: expert of module m serving the j-th task of the order.
    let rows: Vec<(String, Vec<Option<usize>>)> = state
        .modules()
        .iter()
        .map(|me| {
            let key = &me.module().weight_key;
            let label = key
                .trim_end_matches(".weight")
                .replace("encoder.layers.", "L")
                .replace(".self_attn.", " ")
                .replace(".mlp.", " ");
            (label, ids.iter().map(|&id| me.expert_of_task(id)).collect())
        })
        .collect();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let path = args.out.join("allocation_map.svg");
    let columns: Vec<String> = order.iter().map(|&t| names[t].clone()).collect();
    allocation_map(&path, &rows, &columns)?;
    println!(
        "{} experts over {} modules after {} tasks (order of seed {}); wrote {}",
        state.num_experts(),
        state.modules().len(),
        order.len(),
        args.seed,
        path.display()
    );
    let (mut subspace, mut cosine) = (Vec::new(), Vec::new());
    for me in candidates.experts().modules() {
        let experts = me.experts();
        for (a, ea) in experts.iter().enumerate() {
            for ec in &experts[a + 1..] {
                let name = me.name();
                subspace.push(madeit::experts::math::affinity(
                    name,
                    AffinityMetric::Subspace,
                    ea,
                    ec,
                )?);
                cosine.push(madeit::experts::math::flat_cosine(ea, ec)?);
            }
        }
    }
    let density = args.out.join("affinity_density.svg");
    affinity_density(&density, &subspace, &cosine)?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "pairwise affinities of {} candidate pairs: subspace mean {:.3}, flat cosine mean {:.3}; wrote {}",
        subspace.len(),
        mean(&subspace),
        mean(&cosine),
        density.display()
    );
    let kinds = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"];
    println!("| layer | {} |", kinds.join(" | "));
    println!("|---:|{}", "---:|".repeat(kinds.len()));
    let layers = bench.config().num_hidden_layers;
    let mut kept = vec![vec![0usize; kinds.len()]; layers];
    for me in state.modules() {
        let key = &me.module().weight_key;
        for (l, row) in kept.iter_mut().enumerate() {
            if !key.starts_with(&format!("encoder.layers.{l}.")) {
                continue;
            }
            if let Some(k) = kinds.iter().position(|k| key.contains(k)) {
                row[k] = me.len();
            }
        }
    }
    let bars = args.out.join("experts_kept.svg");
    experts_kept(&bars, &kinds, &kept, order.len())?;
    println!("wrote {}", bars.display());
    for l in 0..layers {
        let prefix = format!("encoder.layers.{l}.");
        let cells: Vec<String> = kinds
            .iter()
            .map(|k| {
                state
                    .modules()
                    .iter()
                    .find(|me| {
                        let key = &me.module().weight_key;
                        key.starts_with(&prefix) && key.contains(k)
                    })
                    .map_or_else(|| "-".to_owned(), |me| me.len().to_string())
            })
            .collect();
        println!("| {l} | {} |", cells.join(" | "));
    }
    Ok(())
}

fn allocation_map(
    path: &std::path::Path,
    rows: &[(String, Vec<Option<usize>>)],
    columns: &[String],
) -> anyhow::Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
    let (cell_w, cell_h, left, top) = (128i32, 18i32, 120i32, 70i32);
    let width = (left + columns.len() as i32 * cell_w + 20) as u32;
    let height = (top + rows.len() as i32 * cell_h + 20) as u32;
    let mut svg = String::new();
    let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let font = |size: i32| ("sans-serif", size).into_font();
    root.draw(&Text::new(
        "MADE-IT expert allocation (cell: expert index serving the task)".to_owned(),
        (10, 12),
        font(15),
    ))
    .map_err(|e| err(&e))?;
    let centred = TextStyle::from(font(11)).pos(Pos::new(HPos::Center, VPos::Center));
    let right = TextStyle::from(font(11)).pos(Pos::new(HPos::Right, VPos::Center));
    for (j, c) in columns.iter().enumerate() {
        let x = left + j as i32 * cell_w + cell_w / 2;
        root.draw(&Text::new(
            format!("{}. {c}", j + 1),
            (x, top - 14),
            centred.clone(),
        ))
        .map_err(|e| err(&e))?;
    }
    for (i, (label, cells)) in rows.iter().enumerate() {
        let y0 = top + i as i32 * cell_h;
        root.draw(&Text::new(
            label.clone(),
            (left - 6, y0 + cell_h / 2),
            right.clone(),
        ))
        .map_err(|e| err(&e))?;
        for (j, e) in cells.iter().enumerate() {
            let x0 = left + j as i32 * cell_w;
            let fill = e.map_or(RGBColor(245, 245, 245), |e| PALETTE[e % PALETTE.len()]);
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + cell_w - 1, y0 + cell_h - 1)],
                fill.filled(),
            ))
            .map_err(|e| err(&e))?;
            if let Some(e) = e {
                root.draw(&Text::new(
                    e.to_string(),
                    (x0 + cell_w / 2, y0 + cell_h / 2),
                    centred.color(&WHITE),
                ))
                .map_err(|e| err(&e))?;
            }
        }
    }
    root.present().map_err(|e| err(&e))?;
    drop(root);
    write_atomic(path, svg.as_bytes())?;
    Ok(())
}

/// Histograms (20 bins over `[-1, 1]` for the cosine, `[0, 1]` for the affinity, as
/// densities) of the two pairwise measures, on one axis.
fn affinity_density(
    path: &std::path::Path,
    subspace: &[f64],
    cosine: &[f64],
) -> anyhow::Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
    const BINS: usize = 40;
    let hist = |v: &[f64]| -> Vec<(f64, f64)> {
        let mut counts = [0usize; BINS];
        for &x in v {
            let b = (((x + 1.0) / 2.0) * BINS as f64)
                .floor()
                .clamp(0.0, (BINS - 1) as f64);
            counts[b as usize] += 1;
        }
        let width = 2.0 / BINS as f64;
        let n = v.len().max(1) as f64;
        counts
            .iter()
            .enumerate()
            .map(|(i, &c)| (-1.0 + (i as f64 + 0.5) * width, c as f64 / (n * width)))
            .collect()
    };
    let (hs, hc) = (hist(subspace), hist(cosine));
    let ymax = hs
        .iter()
        .chain(&hc)
        .map(|p| p.1)
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let mut svg = String::new();
    let root = SVGBackend::with_string(&mut svg, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Pairwise similarity of the tasks' candidate experts",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(-1.0f64..1.0f64, 0.0f64..ymax)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("similarity")
        .y_desc("density")
        .draw()
        .map_err(|e| err(&e))?;
    for (h, color, label) in [
        (&hs, PALETTE[0], "subspace affinity S (MADE-IT)"),
        (&hc, PALETTE[1], "cosine of flattened updates"),
    ] {
        chart
            .draw_series(LineSeries::new(h.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    present_with_legend(chart, &root, &err)?;
    drop(root);
    write_atomic(path, svg.as_bytes())?;
    Ok(())
}

/// Draws the series legend of `chart` and renders `root` (the chart's drawing area).
fn present_with_legend<'a, 'b: 'a>(
    mut chart: ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    root: &DrawingArea<SVGBackend<'b>, Shift>,
    err: &dyn Fn(&dyn std::fmt::Display) -> anyhow::Error,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Grouped bars: for each component, the experts kept in each layer, with the number of
/// tasks as the dashed ceiling.
fn experts_kept(
    path: &std::path::Path,
    kinds: &[&str],
    kept: &[Vec<usize>],
    tasks: usize,
) -> anyhow::Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
    let layers = kept.len().max(1);
    let mut svg = String::new();
    let root = SVGBackend::with_string(&mut svg, (760, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let groups = kinds.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "MADE-IT: experts kept per component and layer",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(40)
        .build_cartesian_2d(0.0f64..groups, 0.0f64..(tasks as f64 + 1.0))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(kinds.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-6 {
                kinds.get(i).map_or_else(String::new, |k| (*k).to_owned())
            } else {
                String::new()
            }
        })
        .y_desc("experts kept")
        .draw()
        .map_err(|e| err(&e))?;
    let width = 0.8 / layers as f64;
    for l in 0..layers {
        let color = PALETTE[l % PALETTE.len()];
        chart
            .draw_series(kinds.iter().enumerate().map(|(k, _)| {
                let v = kept.get(l).and_then(|r| r.get(k)).copied().unwrap_or(0) as f64;
                let x0 = k as f64 + 0.1 + l as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], color.filled())
            }))
            .map_err(|e| err(&e))?
            .label(format!("layer {l}"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, tasks as f64), (groups, tasks as f64)],
            6,
            4,
            BLACK.stroke_width(1),
        ))
        .map_err(|e| err(&e))?
        .label("one per task")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
    present_with_legend(chart, &root, &err)?;
    drop(root);
    write_atomic(path, svg.as_bytes())?;
    Ok(())
}
