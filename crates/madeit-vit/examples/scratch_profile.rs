use burn::prelude::*;
use burn::tensor::module::{attention, layer_norm, linear};
use burn::tensor::ops::AttentionModuleOptions;
use std::time::Instant;

fn t<F: FnMut() -> Vec<f32>>(name: &str, reps: usize, mut f: F) {
    let _ = f();
    let s = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(f());
    }
    println!(
        "{name}: {:.2} ms",
        s.elapsed().as_secs_f64() * 1e3 / reps as f64
    );
}

fn main() {
    let dev = Device::flex();
    let r =
        |s: [usize; 2]| Tensor::<2>::random(s, burn::tensor::Distribution::Normal(0.0, 0.05), &dev);
    let x = Tensor::<3>::random(
        [32, 50, 768],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &dev,
    );
    let w = r([768, 2304]);
    let b = Tensor::<1>::zeros([2304], &dev);
    let w1 = r([768, 3072]);
    let w2 = r([3072, 768]);
    let x2 = x.clone().reshape([1600, 768]);
    t("matmul 1600x768x2304", 5, || {
        x2.clone().matmul(w.clone()).into_data().to_vec().unwrap()
    });
    t("matmul 1600x768x3072", 5, || {
        x2.clone().matmul(w1.clone()).into_data().to_vec().unwrap()
    });
    let h = Tensor::<2>::random(
        [1600, 3072],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &dev,
    );
    t("matmul 1600x3072x768", 5, || {
        h.clone().matmul(w2.clone()).into_data().to_vec().unwrap()
    });
    t("linear qkv 3d", 5, || {
        linear(x.clone(), w.clone(), Some(b.clone()))
            .into_data()
            .to_vec()
            .unwrap()
    });
    let g = Tensor::<1>::ones([768], &dev);
    t("layernorm", 5, || {
        layer_norm(x.clone(), g.clone(), Some(g.clone()), 1e-5)
            .into_data()
            .to_vec()
            .unwrap()
    });
    let h3 = h.clone().reshape([32, 50, 3072]);
    t("quick_gelu", 5, || {
        (h3.clone() * burn::tensor::activation::sigmoid(h3.clone() * 1.702))
            .into_data()
            .to_vec()
            .unwrap()
    });
    let bias: Vec<f32> = vec![0.1; 3072];
    let mut raw: Vec<f32> = (0..4_915_200)
        .map(|i| ((i % 1000) as f32) * 0.01 - 5.0)
        .collect();
    t("raw kernel loop 1 thread", 5, || {
        for v in raw.iter_mut() {
            *v = madeit_vit::__scratch_qg1(*v);
        }
        vec![raw[7]]
    });
    t("into_data+from_data", 5, || {
        let d = h3.clone().into_data();
        let v: Vec<f32> = d.try_into_vec().unwrap();
        let t2 = Tensor::<3>::from_data(TensorData::new(v, [32, 50, 3072]), &dev);
        vec![t2.dims()[0] as f32]
    });
    t("quick_gelu kernel", 5, || {
        let y = madeit_vit::__scratch_qg(h3.clone(), &bias);
        y.into_data().to_vec().unwrap()
    });
    t("full forward", 2, || {
        let m = madeit_vit::ClipVisionModel::load_dir(std::path::Path::new("/tmp/vitb32")).unwrap();
        let s = Instant::now();
        let px = Tensor::<4>::random(
            [32, 3, 224, 224],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &dev,
        );
        let o = m.forward(px).unwrap();
        let v = o.pooled_output.into_data().to_vec().unwrap();
        println!("  forward only: {:.0} ms", s.elapsed().as_secs_f64() * 1e3);
        v
    });
    let qkv = linear(x.clone(), w.clone(), Some(b.clone()));
    t("split+reshape+swap", 5, || {
        let q = qkv
            .clone()
            .narrow(2, 0, 768)
            .reshape([32, 50, 12, 64])
            .swap_dims(1, 2);
        let k = qkv
            .clone()
            .narrow(2, 768, 768)
            .reshape([32, 50, 12, 64])
            .swap_dims(1, 2);
        let v = qkv
            .clone()
            .narrow(2, 1536, 768)
            .reshape([32, 50, 12, 64])
            .swap_dims(1, 2);
        (q + k + v).into_data().to_vec().unwrap()
    });
    let q = qkv
        .clone()
        .narrow(2, 0, 768)
        .reshape([32, 50, 12, 64])
        .swap_dims(1, 2);
    let k = qkv
        .clone()
        .narrow(2, 768, 768)
        .reshape([32, 50, 12, 64])
        .swap_dims(1, 2);
    let v = qkv
        .clone()
        .narrow(2, 1536, 768)
        .reshape([32, 50, 12, 64])
        .swap_dims(1, 2);
    t("attention", 5, || {
        attention(
            q.clone(),
            k.clone(),
            v.clone(),
            None,
            None,
            AttentionModuleOptions::default(),
        )
        .into_data()
        .to_vec()
        .unwrap()
    });
    let a = attention(
        q.clone(),
        k.clone(),
        v.clone(),
        None,
        None,
        AttentionModuleOptions::default(),
    );
    t("attn out swap+reshape", 5, || {
        a.clone()
            .swap_dims(1, 2)
            .reshape([32, 50, 768])
            .into_data()
            .to_vec()
            .unwrap()
    });
    t("add residual", 5, || {
        (x.clone() + x.clone()).into_data().to_vec().unwrap()
    });
    let px = Tensor::<4>::random(
        [32, 3, 224, 224],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &dev,
    );
    t("patchify", 3, || {
        px.clone()
            .reshape([32, 3, 7, 32, 7, 32])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([32 * 49, 3072])
            .into_data()
            .to_vec()
            .unwrap()
    });
}
