//! Accuracy, loss and the confusion matrix, computed from predictions the
//! same way for every backend.

use serde::Serialize;

/// Per-example results of a forward pass over a whole split.
#[derive(Debug, Clone, Default)]
pub struct Predictions {
    /// Sum of per-example cross-entropy losses.
    pub loss_sum: f64,
    /// Arg-max class of each example, in the split's order.
    pub classes: Vec<u32>,
}

/// The result of evaluating a model on a labelled split.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub examples: usize,
    /// Mean cross-entropy loss.
    pub loss: f64,
    /// Fraction of examples classified correctly.
    pub accuracy: f64,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

impl Evaluation {
    pub fn new(pred: &Predictions, labels: &[u32], classes: usize) -> Self {
        let mut confusion = vec![vec![0u64; classes]; classes];
        let mut correct = 0usize;
        for (&p, &l) in pred.classes.iter().zip(labels) {
            confusion[l as usize][p as usize] += 1;
            correct += (p == l) as usize;
        }
        let n = labels.len();
        Evaluation {
            examples: n,
            loss: pred.loss_sum / n.max(1) as f64,
            accuracy: correct as f64 / n.max(1) as f64,
            confusion,
        }
    }

    /// The confusion matrix as aligned text, rows true classes, columns
    /// predictions.
    pub fn confusion_table(&self) -> String {
        let w = self
            .confusion
            .iter()
            .flatten()
            .max()
            .map(|m| m.to_string().len())
            .unwrap_or(1)
            .max(3);
        let mut s = format!("{:>6} |", "true");
        for j in 0..self.confusion.len() {
            s += &format!(" {j:>w$}");
        }
        s += "  <- predicted\n";
        s += &format!("{}\n", "-".repeat(8 + (w + 1) * self.confusion.len()));
        for (i, row) in self.confusion.iter().enumerate() {
            s += &format!("{i:>6} |");
            for v in row {
                s += &format!(" {v:>w$}");
            }
            s += "\n";
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_counts_and_accuracy() {
        let p = Predictions {
            loss_sum: 2.0,
            classes: vec![0, 1, 1, 2],
        };
        let e = Evaluation::new(&p, &[0, 1, 2, 2], 3);
        assert_eq!(e.accuracy, 0.75); // 3 of 4
        assert_eq!(e.loss, 0.5); // 2.0 / 4
        assert_eq!(e.confusion[2], vec![0, 1, 1]);
    }
}
