//! PreFail-style pruning of fault combinations: policies a user picks and
//! combines, each pruned set recorded with the policy and the reason.
//!
//! Faults run alone first; then the combinations of the chosen size go
//! through the policies in this order: only faults tolerated alone,
//! equivalence classes, and the budget (spent on the combinations most
//! likely to fail, as the single runs measured them).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::plan::{Fault, FaultId, Pruning};

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    ToleratedAlone,
    Equivalence,
    Budget,
}

/// A fault set that was not run, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Pruned {
    pub faults: Vec<FaultId>,
    pub policy: Policy,
    pub reason: String,
}

/// What the single runs of one fault showed.
#[derive(Debug, Clone, PartialEq)]
pub struct Alone {
    /// Every repetition was tolerated.
    pub tolerated: bool,
    /// The verdicts, for the reason text ("degraded").
    pub verdicts: String,
    /// Mean availability over the repetitions.
    pub availability: Option<f64>,
}

/// The fault sets to run alone: one per equivalence class (the first of
/// each), and for every fault the one whose single run stands for it.
pub fn singles(faults: &[Fault], pruning: &Pruning) -> (Vec<FaultId>, Vec<FaultId>, Vec<Pruned>) {
    let mut run = Vec::new();
    let mut stands_for = Vec::new();
    let mut pruned = Vec::new();
    let mut first_of: BTreeMap<&str, FaultId> = BTreeMap::new();
    for (i, f) in faults.iter().enumerate() {
        let id = FaultId(i);
        let class = pruning
            .equivalence
            .as_ref()
            .and_then(|l| f.labels.get(l))
            .map(String::as_str);
        match class.and_then(|c| first_of.get(c).copied()) {
            Some(rep) => {
                stands_for.push(rep);
                pruned.push(Pruned {
                    faults: vec![id],
                    policy: Policy::Equivalence,
                    reason: format!(
                        "equivalent to {} ({} = {})",
                        faults[rep.0].name,
                        pruning.equivalence.as_deref().unwrap_or_default(),
                        class.unwrap_or_default()
                    ),
                });
            }
            None => {
                if let Some(c) = class {
                    first_of.insert(c, id);
                }
                stands_for.push(id);
                run.push(id);
            }
        }
    }
    (run, stands_for, pruned)
}

/// The k-subsets of 0..n, in lexicographic order.
pub fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    if k == 0 || k > n {
        return out;
    }
    let mut idx: Vec<usize> = (0..k).collect();
    loop {
        out.push(idx.clone());
        let Some(i) = (0..k).rev().find(|&i| idx[i] != i + n - k) else {
            return out;
        };
        idx[i] += 1;
        for j in i + 1..k {
            idx[j] = idx[j - 1] + 1;
        }
    }
}

/// A combination's likelihood of failing: 1 - the product of its faults'
/// availability alone (measured, else 1 - the plan's `likelihood`, else 1).
fn score(set: &[FaultId], faults: &[Fault], alone: &dyn Fn(FaultId) -> Option<Alone>) -> f64 {
    1.0 - set
        .iter()
        .map(|&f| {
            alone(f)
                .and_then(|a| a.availability)
                .or(faults[f.0].likelihood.map(|l| 1.0 - l))
                .unwrap_or(1.0)
        })
        .product::<f64>()
}

fn names(set: &[FaultId], faults: &[Fault]) -> String {
    let n: Vec<_> = set.iter().map(|f| faults[f.0].name.as_str()).collect();
    format!("{{{}}}", n.join(", "))
}

/// The combinations of `size` to run, likeliest to fail first, with their
/// scores; and those pruned. `stands_for` maps each fault to the one whose
/// single run measured it (see [`singles`]); `alone` gives that run's
/// outcome.
pub fn combinations(
    faults: &[Fault],
    size: usize,
    pruning: &Pruning,
    stands_for: &[FaultId],
    alone: &dyn Fn(FaultId) -> Option<Alone>,
) -> (Vec<(Vec<FaultId>, f64)>, Vec<Pruned>) {
    let measured = |f: FaultId| alone(stands_for[f.0]);
    let mut kept = Vec::new();
    let mut pruned = Vec::new();
    let mut classes_seen: BTreeMap<Vec<String>, Vec<FaultId>> = BTreeMap::new();
    for idx in subsets(faults.len(), size) {
        let set: Vec<FaultId> = idx.into_iter().map(FaultId).collect();
        if pruning.tolerated_alone {
            let not: Vec<String> = set
                .iter()
                .filter_map(|&f| match measured(f) {
                    Some(a) if a.tolerated => None,
                    Some(a) => Some(format!("{} was {} alone", faults[f.0].name, a.verdicts)),
                    None => Some(format!("{} did not run alone", faults[f.0].name)),
                })
                .collect();
            if !not.is_empty() {
                pruned.push(Pruned {
                    faults: set,
                    policy: Policy::ToleratedAlone,
                    reason: not.join("; "),
                });
                continue;
            }
        }
        if let Some(label) = &pruning.equivalence {
            let mut key: Vec<String> = set
                .iter()
                .map(|f| faults[f.0].labels.get(label).cloned().unwrap_or_default())
                .collect();
            key.sort();
            if let Some(first) = classes_seen.get(&key) {
                pruned.push(Pruned {
                    reason: format!(
                        "equivalent to {} ({label} = {})",
                        names(first, faults),
                        key.join(" + ")
                    ),
                    faults: set,
                    policy: Policy::Equivalence,
                });
                continue;
            }
            classes_seen.insert(key, set.clone());
        }
        let s = score(
            &set.iter().map(|&f| stands_for[f.0]).collect::<Vec<_>>(),
            faults,
            alone,
        );
        kept.push((set, s));
    }
    // Likeliest to fail first; ties keep the plan's order.
    kept.sort_by(|a, b| b.1.total_cmp(&a.1));
    if let Some(budget) = pruning.budget {
        let over = kept.split_off(budget.get().min(kept.len()));
        for (set, s) in over {
            pruned.push(Pruned {
                faults: set,
                policy: Policy::Budget,
                reason: format!(
                    "over the budget of {budget} combination(s); failure likelihood {s:.3} is below the last one run ({:.3})",
                    kept.last().map_or(0.0, |k| k.1)
                ),
            });
        }
    }
    (kept, pruned)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;
    use crate::plan::Name;

    fn fault(name: &str, class: &str) -> Fault {
        Fault {
            name: Name::try_from(name.to_string()).unwrap(),
            spec: serde_json::Map::new(),
            labels: [("class".to_string(), class.to_string())].into(),
            likelihood: None,
        }
    }

    /// The end-to-end campaign's shape: two equivalent backend cuts, a lossy
    /// client link that is not tolerated, duplicates that are.
    fn four() -> Vec<Fault> {
        vec![
            fault("cut-b1", "backend"),
            fault("cut-b2", "backend"),
            fault("loss", "link-loss"),
            fault("dup", "link-dup"),
        ]
    }

    fn outcome(f: FaultId) -> Option<Alone> {
        let (tolerated, verdicts, availability) = match f.0 {
            0 => (true, "tolerated", 0.9),
            2 => (false, "degraded", 0.7),
            3 => (true, "tolerated", 1.0),
            _ => return None,
        };
        Some(Alone {
            tolerated,
            verdicts: verdicts.into(),
            availability: Some(availability),
        })
    }

    fn ids(v: &[usize]) -> Vec<FaultId> {
        v.iter().copied().map(FaultId).collect()
    }

    #[test]
    fn subsets_are_all_there_once() {
        assert_eq!(subsets(4, 2).len(), 6);
        assert_eq!(subsets(5, 3).len(), 10);
        assert_eq!(subsets(3, 3), vec![vec![0, 1, 2]]);
        assert!(subsets(2, 3).is_empty());
        assert_eq!(subsets(3, 2), vec![vec![0, 1], vec![0, 2], vec![1, 2]]);
    }

    #[test]
    fn no_policy_runs_everything() {
        let f = four();
        let (run, stands, pruned) = singles(&f, &Pruning::default());
        assert_eq!(run, ids(&[0, 1, 2, 3]));
        assert!(pruned.is_empty());
        let (kept, pruned) = combinations(&f, 2, &Pruning::default(), &stands, &outcome);
        assert_eq!(kept.len(), 6);
        assert!(pruned.is_empty());
    }

    #[test]
    fn all_policies_together() {
        let f = four();
        let p = Pruning {
            tolerated_alone: true,
            equivalence: Some("class".into()),
            budget: NonZeroUsize::new(1),
        };
        let (run, stands, pruned) = singles(&f, &p);
        assert_eq!(run, ids(&[0, 2, 3]));
        assert_eq!(stands, ids(&[0, 0, 2, 3]));
        assert_eq!(pruned.len(), 1);
        assert_eq!(pruned[0].policy, Policy::Equivalence);
        assert!(
            pruned[0].reason.contains("equivalent to cut-b1"),
            "{pruned:?}"
        );

        let (kept, pruned) = combinations(&f, 2, &p, &stands, &outcome);
        // {b1,b2}: 1 - 0.9 * 0.9 = 0.19 beats {b1,dup}: 0.1.
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].0, ids(&[0, 1]));
        assert!((kept[0].1 - 0.19).abs() < 1e-9);
        let by = |policy| pruned.iter().filter(|p| p.policy == policy).count();
        assert_eq!(by(Policy::ToleratedAlone), 3, "{pruned:#?}");
        assert_eq!(by(Policy::Equivalence), 1);
        assert_eq!(by(Policy::Budget), 1);
        let loss = pruned.iter().find(|p| p.faults == ids(&[0, 2])).unwrap();
        assert_eq!(loss.reason, "loss was degraded alone");
        let eq = pruned.iter().find(|p| p.faults == ids(&[1, 3])).unwrap();
        assert!(
            eq.reason.contains("equivalent to {cut-b1, dup}"),
            "{}",
            eq.reason
        );
        let budget = pruned.iter().find(|p| p.faults == ids(&[0, 3])).unwrap();
        assert!(budget.reason.contains("budget of 1"), "{}", budget.reason);
    }

    #[test]
    fn the_likelihood_prior_orders_what_was_not_measured() {
        let mut f = four();
        f[2].likelihood = Some(0.9);
        let p = Pruning {
            budget: NonZeroUsize::new(2),
            ..Pruning::default()
        };
        let (_, stands, _) = singles(&f, &p);
        let (kept, pruned) = combinations(&f, 2, &p, &stands, &|_| None);
        assert_eq!(kept.len(), 2);
        assert!(
            kept.iter().all(|(s, _)| s.contains(&FaultId(2))),
            "{kept:?}"
        );
        assert_eq!(pruned.len(), 4);
    }
}
