//! The wgpu backend against the CPU backend and transformers' fixtures.
//!
//! Built only with `--features wgpu`. Each test looks for a wgpu adapter first and
//! returns early (printing why) when none is present, so a machine without a GPU or a
//! software Vulkan driver passes without testing anything; the note printed says so.
//! Linux machines without a GPU can run these tests on Mesa's software Vulkan driver
//! (lavapipe, Debian package `mesa-vulkan-drivers`).
#![cfg(feature = "wgpu")]
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use common::{fixture, host, max_abs_diff};
use madeit_params::ParamDict;
use madeit_vit::{ClipVisionModel, wgpu_available, wgpu_device};

/// The same bound as the CPU parity test against transformers.
const TOL: f32 = 1e-4;

#[test]
fn wgpu_forward_matches_cpu_and_transformers() {
    if !wgpu_available() {
        eprintln!("no wgpu adapter on this machine: the wgpu forward was not tested");
        return;
    }
    let dir = fixture("clip_tiny");
    let io = ParamDict::load(&dir.join("io.safetensors")).unwrap();
    let pixels = io.get("pixel_values").unwrap();
    let batch = pixels.shape()[0];

    let cpu = ClipVisionModel::load_dir(&dir).unwrap();
    let gpu = ClipVisionModel::load_dir_on(&dir, &wgpu_device().unwrap()).unwrap();
    let out_cpu = cpu
        .forward(cpu.pixels(pixels.data().to_vec(), batch).unwrap())
        .unwrap();
    let out_gpu = gpu
        .forward(gpu.pixels(pixels.data().to_vec(), batch).unwrap())
        .unwrap();

    for (name, c, g, reference) in [
        (
            "last_hidden_state",
            host(&out_cpu.last_hidden_state),
            host(&out_gpu.last_hidden_state),
            io.get("last_hidden_state").unwrap(),
        ),
        (
            "image_embeds",
            host(out_cpu.image_embeds.as_ref().unwrap()),
            host(out_gpu.image_embeds.as_ref().unwrap()),
            io.get("image_embeds").unwrap(),
        ),
    ] {
        let d_cpu = max_abs_diff(&g, &c);
        let d_ref = max_abs_diff(&g, reference);
        eprintln!("{name}: wgpu vs cpu {d_cpu:.2e}, wgpu vs transformers {d_ref:.2e}");
        assert!(d_cpu <= TOL, "{name}: wgpu vs cpu max|diff| = {d_cpu}");
        assert!(
            d_ref <= TOL,
            "{name}: wgpu vs transformers max|diff| = {d_ref}"
        );
    }
}
