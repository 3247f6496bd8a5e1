//! The `ssh` bench's goals, side-by-side table and traffic section, from
//! its results.
use super::*;

/// Peak RSS of haul on either side, MiB.
pub(super) const MAX_RSS_MIB: f64 = 150.0;

/// The haul cells of `corpus`: haul and haul-twice in every measure.
pub(super) fn haul_cells<'r>(r: &'r Results, corpus: &str) -> Vec<&'r Cell> {
    r.cells
        .iter()
        .filter(|c| c.corpus == corpus && (c.tool == "haul" || c.tool == "haul-twice"))
        .collect()
}

pub(super) fn rss_verdict(value: Option<f64>, cells: &[&Cell]) -> Verdict {
    match value {
        None => Verdict::NotRun,
        Some(_) if !cells.iter().all(|c| c.valid()) => Verdict::Invalid,
        Some(v) if v <= MAX_RSS_MIB => Verdict::Pass,
        Some(_) => Verdict::Miss,
    }
}

pub(super) fn mib(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| k as f64 / 1024.0)
}

pub(super) fn show_mib(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1} MiB"))
}

pub(super) fn goals(bench: &Bench<'_>, opts: &SshOpts) -> Vec<Goal> {
    let r = &bench.results;
    let mut goals = Vec::new();
    for corpus in opts.common.corpora.iter().map(|k| k.name()) {
        for &m in &opts.measures {
            for &(peer, max) in m.goals() {
                goals.push(Goal::ratio(r, corpus, m.name(), "haul", peer.name(), max));
            }
        }
        let cells = haul_cells(r, corpus);
        let client = mib(cells.iter().filter_map(|c| c.max_rss_kib()).max());
        goals.push(Goal {
            label: format!("{corpus}: haul client peak RSS (every measure)"),
            value: show_mib(client),
            target: format!("<= {MAX_RSS_MIB:.0} MiB"),
            verdict: rss_verdict(client, &cells),
        });
        let server = mib(bench
            .serve_kib
            .iter()
            .filter(|((c, _), _)| c == corpus)
            .flat_map(|(_, v)| v.iter().copied())
            .max());
        goals.push(Goal {
            label: format!("{corpus}: haul serve peak RSS (every measure)"),
            value: show_mib(server),
            target: format!("<= {MAX_RSS_MIB:.0} MiB"),
            verdict: rss_verdict(server, &cells),
        });
    }
    goals
}

/// The side-by-side table: every ratio, then both sides' peak RSS.
pub(super) fn pairs(bench: &Bench<'_>, opts: &SshOpts) -> Vec<Pair> {
    let r = &bench.results;
    let several = opts.common.corpora.len() > 1;
    let mut pairs = Vec::new();
    for corpus in opts.common.corpora.iter().map(|k| k.name()) {
        let label = |what: String| {
            if several {
                format!("{corpus}: {what}")
            } else {
                what
            }
        };
        for &m in &opts.measures {
            for &(peer, max) in m.goals() {
                let what = label(format!("{} vs {}, s", m.what(), peer.name()));
                pairs.push(Pair::time(
                    r,
                    corpus,
                    m.name(),
                    ("haul", peer.name()),
                    what,
                    max,
                ));
            }
        }
        for &m in &opts.measures {
            let cell = r.get(corpus, m.name(), "haul");
            let cells: Vec<&Cell> = cell.into_iter().collect();
            let client = mib(cell.and_then(Cell::max_rss_kib));
            let server = mib(bench
                .serve_kib
                .get(&(corpus.to_owned(), m))
                .and_then(|v| v.iter().copied().max()));
            for (side, value) in [("client", client), ("haul serve", server)] {
                pairs.push(Pair {
                    measure: label(format!("peak RSS, {side}, {}", m.what())),
                    haul: show_mib(value),
                    peer: "-".into(),
                    ratio: "-".into(),
                    spread: "-".into(),
                    goal: format!("<= {MAX_RSS_MIB:.0} MiB"),
                    verdict: rss_verdict(value, &cells),
                });
            }
        }
    }
    pairs
}

/// haul's traffic over the ssh pipe, from its `--json`.
pub(super) fn traffic_section(bench: &Bench<'_>, sources: &BTreeMap<String, u64>) -> Section {
    let median = |xs: Vec<u64>| crate::report::median(xs.into_iter().map(|x| x as f64).collect());
    let rows = bench
        .traffic
        .iter()
        .map(|((corpus, m), v)| {
            let sent = median(v.iter().map(|t| t.0).collect());
            let received = median(v.iter().map(|t| t.1).collect());
            let of_source = sent
                .zip(sources.get(corpus).filter(|&&b| b > 0))
                .map_or("-".into(), |(s, &b)| {
                    format!("{:.2}%", s / b as f64 * 100.0)
                });
            let mb = |x: Option<f64>| x.map_or("-".into(), |x| format!("{:.3} MB", x / 1e6));
            vec![
                corpus.clone(),
                m.name().to_owned(),
                mb(sent),
                mb(received),
                of_source,
                v.len().to_string(),
            ]
        })
        .collect();
    Section {
        title: "Bytes over ssh (haul)".into(),
        intro: "`bytes_sent` and `bytes_received` from haul's `--json` summary: what the client \
                wrote to and read from the ssh pipe (after compression), summed over both hosts \
                for the fan-out; median of the timed rounds. \"of source\" relates bytes sent to \
                the corpus's bytes."
            .into(),
        header: vec!["corpus", "measure", "sent", "received", "of source", "runs"],
        rows,
    }
}
