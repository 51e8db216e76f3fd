//! Weight averaging of f32 models of one architecture: [`average`], the
//! arithmetic mean of every tensor ("model soups", `wgtrain average`), and
//! [`running_update`], the equal-weight running mean of stochastic weight
//! averaging (`train --swa-from`), as `torch.optim.swa_utils.AveragedModel`
//! computes it.

use super::header::{shared_class_names, NamesMismatch};
use super::mlp::Mlp;
use crate::error::ModelError;

/// The arithmetic mean of every tensor of `models` (`(name, model)`; the
/// names are only used in messages): summed in f64 in the order given,
/// divided by the count, rounded to f32. The models must share layer
/// widths, input shape and preprocessing, the first that does not named
/// beside the first model; those with class names must give the same, and
/// the mean takes them.
pub fn average(models: &[(String, Mlp)]) -> Result<Mlp, ModelError> {
    let Some((first_name, first)) = models.first() else {
        return Err(ModelError::Invalid("nothing to average: no models".into()));
    };
    for (name, m) in &models[1..] {
        if m.sizes() != first.sizes() {
            return Err(ModelError::Invalid(format!(
                "{first_name} has layers {:?} but {name} has {:?}; only models of one architecture average",
                first.sizes(),
                m.sizes()
            )));
        }
        if m.preprocess != first.preprocess {
            return Err(ModelError::Invalid(format!(
                "{first_name} preprocesses its inputs as {:?} but {name} as {:?}; averaged weights need one preprocessing",
                first.preprocess, m.preprocess
            )));
        }
        if m.input_shape != first.input_shape {
            return Err(ModelError::Invalid(format!(
                "{first_name} has input shape {:?} but {name} has {:?}",
                first.input_shape, m.input_shape
            )));
        }
    }
    // The models with class names must all give the same; the mean takes
    // them.
    let names = shared_class_names(models.iter().map(|(n, m)| (n.as_str(), &m.class_names[..])))
        .map_err(|NamesMismatch { first: (a, na), other: (b, nb) }| {
            ModelError::Invalid(format!(
                "{a} names its classes {na:?} but {b} names them {nb:?}; averaged models must agree on their class names"
            ))
        })?
        .map_or_else(Vec::new, |(_, n)| n.to_vec());
    let n = models.len() as f64;
    let mean = |get: &dyn Fn(&Mlp) -> &[f32]| -> Vec<f32> {
        let mut sum = vec![0f64; get(first).len()];
        for (_, m) in models {
            for (s, &v) in sum.iter_mut().zip(get(m)) {
                *s += f64::from(v);
            }
        }
        sum.into_iter().map(|s| (s / n) as f32).collect()
    };
    let mut out = first.clone();
    out.class_names = names;
    for (l, layer) in out.layers.iter_mut().enumerate() {
        layer.weight = mean(&|m| &m.layers[l].weight);
        layer.bias = mean(&|m| &m.layers[l].bias);
    }
    Ok(out)
}

/// Fold `model` into `avg`, the mean of `count` models so far:
/// `avg += (model - avg) / (count + 1)` per value, in f32, as
/// `AveragedModel`'s default `avg_fn`. With `count` 0 `avg` becomes a copy
/// of `model`. The two must have the same layer widths.
pub fn running_update(avg: &mut Mlp, count: usize, model: &Mlp) -> Result<(), ModelError> {
    if avg.sizes() != model.sizes() {
        return Err(ModelError::Invalid(format!(
            "the running average has layers {:?} but the model has {:?}",
            avg.sizes(),
            model.sizes()
        )));
    }
    if count == 0 {
        avg.clone_from(model);
        return Ok(());
    }
    let d = (count + 1) as f32;
    for (a, m) in avg.layers.iter_mut().zip(&model.layers) {
        for (x, &v) in a.weight.iter_mut().zip(&m.weight).chain(a.bias.iter_mut().zip(&m.bias)) {
            *x += (v - *x) / d;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Preprocess;

    #[test]
    fn running_mean_is_the_mean() {
        let ms: Vec<Mlp> = (0..4)
            .map(|s| Mlp::new(&[5, 3, 2], s, Preprocess::identity(), vec![]).unwrap())
            .collect();
        let mut avg = ms[0].clone();
        for (k, m) in ms.iter().enumerate() {
            running_update(&mut avg, k, m).unwrap();
        }
        let named: Vec<(String, Mlp)> = ms.iter().map(|m| ("m".to_string(), m.clone())).collect();
        let want = average(&named).unwrap();
        for (a, w) in avg.layers.iter().zip(&want.layers) {
            for (x, y) in a.weight.iter().zip(&w.weight).chain(a.bias.iter().zip(&w.bias)) {
                assert!((x - y).abs() < 1e-6, "{x} vs {y}");
            }
        }
        let other = Mlp::new(&[5, 4, 2], 0, Preprocess::identity(), vec![]).unwrap();
        assert!(running_update(&mut avg, 4, &other).is_err());
    }

    #[test]
    fn the_mean_takes_the_names_its_models_agree_on() {
        let named = |s: u64, n: &[&str]| {
            let m = Mlp::new(&[5, 3, 2], s, Preprocess::identity(), vec![]).unwrap();
            m.with_class_names(n.iter().map(|x| x.to_string()).collect()).unwrap()
        };
        let ms = vec![
            ("a".to_string(), named(0, &[])),
            ("b".to_string(), named(1, &["cat", "dog"])),
            ("c".to_string(), named(2, &["cat", "dog"])),
        ];
        assert_eq!(average(&ms).unwrap().class_names, vec!["cat", "dog"]);
        let mut ms = ms;
        ms.push(("d".to_string(), named(3, &["dog", "cat"])));
        let e = average(&ms).unwrap_err().to_string();
        assert!(
            e.contains("b names its classes") && e.contains("but d names them"),
            "{e}"
        );
    }
}
