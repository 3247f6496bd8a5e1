//! Results of a benchmark run: medians, goals, and their text and Markdown
//! renderings, plus a machine-readable block that `compare` reads back.

use std::fmt::Write as _;

use crate::measure::Run;

/// All runs of one tool in one scenario on one corpus.
pub struct Cell {
    pub corpus: String,
    pub scenario: String,
    pub tool: String,
    pub runs: Vec<Run>,
    /// Failed runs and verification mismatches.
    pub problems: Vec<String>,
    /// What the tool wrote to stderr in its last run, if anything.
    pub last_stderr: String,
}

impl Cell {
    pub fn valid(&self) -> bool {
        !self.runs.is_empty() && self.problems.is_empty()
    }

    pub fn walls(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r.wall_secs).collect()
    }

    pub fn median_wall(&self) -> Option<f64> {
        median(self.walls())
    }

    pub fn median_cpu(&self) -> Option<f64> {
        median(self.runs.iter().map(|r| r.cpu_secs).collect())
    }

    pub fn max_others_load(&self) -> Option<f64> {
        self.runs.iter().map(|r| r.others_load).reduce(f64::max)
    }

    pub fn max_rss_kib(&self) -> Option<u64> {
        self.runs.iter().map(|r| r.max_rss_kib).max()
    }
}

/// The median over rounds of `a`'s wall time over `b`'s in the same round;
/// `None` unless both ran the same number of rounds (a tool skipped in some
/// round leaves nothing to pair).
pub fn per_round_median(a: &Cell, b: &Cell) -> Option<f64> {
    median(per_round_ratios(a, b)?)
}

/// `a`'s wall time over `b`'s, round by round; `None` unless both ran the
/// same number of rounds.
pub fn per_round_ratios(a: &Cell, b: &Cell) -> Option<Vec<f64>> {
    if a.runs.len() != b.runs.len() {
        return None;
    }
    Some(
        a.runs
            .iter()
            .zip(&b.runs)
            .filter(|(_, y)| y.wall_secs > 0.0)
            .map(|(x, y)| x.wall_secs / y.wall_secs)
            .collect(),
    )
}

/// haul against the `--baseline` binary (the tool "haul-base") in one
/// scenario: the ratio read both ways, as for goals, and the rounds' spread.
pub struct BaseRatio {
    pub corpus: String,
    pub scenario: String,
    pub haul_s: Option<f64>,
    pub base_s: Option<f64>,
    /// Ratio of the two medians.
    pub of_medians: Option<f64>,
    /// Median of the per-round ratios.
    pub of_rounds: Option<f64>,
    /// Smallest and largest per-round ratio.
    pub spread: Option<(f64, f64)>,
    pub valid: bool,
}

/// The name the `--baseline` haul binary runs under.
pub const HAUL_BASE: &str = "haul-base";

impl BaseRatio {
    /// Every scenario in which both haul and haul-base ran, in table order.
    pub fn all(r: &Results) -> Vec<BaseRatio> {
        r.cells
            .iter()
            .filter(|c| c.tool == HAUL_BASE)
            .filter_map(|b| {
                let a = r.get(&b.corpus, &b.scenario, "haul")?;
                let ratios = per_round_ratios(a, b).filter(|v| !v.is_empty());
                let (haul_s, base_s) = (a.median_wall(), b.median_wall());
                Some(BaseRatio {
                    corpus: b.corpus.clone(),
                    scenario: b.scenario.clone(),
                    haul_s,
                    base_s,
                    of_medians: haul_s
                        .zip(base_s)
                        .filter(|&(_, y)| y > 0.0)
                        .map(|(x, y)| x / y),
                    of_rounds: ratios.clone().and_then(median),
                    spread: ratios.map(|v| {
                        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                        (lo, v.iter().copied().fold(f64::NEG_INFINITY, f64::max))
                    }),
                    valid: a.valid() && b.valid(),
                })
            })
            .collect()
    }

    /// No slowdown: the median of the rounds' ratios is at most 1, or the
    /// rounds' spread reaches down to 1 (the difference is inside the noise).
    /// Without rounds to pair, only the ratio of medians is there to judge.
    pub fn no_slowdown(&self) -> Option<bool> {
        match (self.of_rounds, self.spread, self.of_medians) {
            (Some(p), Some((lo, _)), _) => Some(p <= 1.0 || lo <= 1.0),
            (_, _, Some(m)) => Some(m <= 1.0),
            _ => None,
        }
    }

    /// The verdict column and the sentence that explains it.
    pub fn verdict(&self) -> (&'static str, String) {
        let head = format!("{} {}: haul / haul-base", self.corpus, self.scenario);
        let read = match (self.of_medians, self.of_rounds, self.spread) {
            (Some(m), Some(p), Some((lo, hi))) => {
                let where_one = if lo <= 1.0 && 1.0 <= hi {
                    "1 is within the spread"
                } else if hi < 1.0 {
                    "every round faster"
                } else {
                    "every round slower"
                };
                format!("{m:.3} (rounds {p:.3}), spread {lo:.3}-{hi:.3}: {where_one}")
            }
            (Some(m), _, _) => format!("{m:.3} (no rounds to pair)"),
            _ => "-".into(),
        };
        let verdict = if !self.valid {
            "INVALID"
        } else {
            match self.no_slowdown() {
                Some(true) => "no slowdown",
                Some(false) => "SLOWER beyond the spread",
                None => "not run",
            }
        };
        (verdict, format!("{head} {read}: {verdict}"))
    }

    /// A table of every scenario's ratio, and the sentence per scenario.
    pub fn rows(r: &Results) -> (Vec<&'static str>, Vec<Vec<String>>, Vec<String>) {
        let header = vec![
            "corpus",
            "scenario",
            "haul s",
            "haul-base s",
            "of medians",
            "rounds",
            "spread",
            "verdict",
        ];
        let ratio = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.3}"));
        let (mut rows, mut lines) = (Vec::new(), Vec::new());
        for b in BaseRatio::all(r) {
            let (verdict, line) = b.verdict();
            rows.push(vec![
                b.corpus.clone(),
                b.scenario.clone(),
                secs(b.haul_s),
                secs(b.base_s),
                ratio(b.of_medians),
                ratio(b.of_rounds),
                b.spread
                    .map_or("-".into(), |(lo, hi)| format!("{lo:.3}-{hi:.3}")),
                verdict.to_owned(),
            ]);
            lines.push(line);
        }
        (header, rows, lines)
    }
}

pub fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// The size of what one tool wrote (a repository, an archive) after one
/// scenario, once per round.
pub struct SizeCell {
    pub corpus: String,
    pub scenario: String,
    pub tool: String,
    /// Total bytes of the regular files, one sample per round.
    pub bytes: Vec<u64>,
    /// Number of regular files, one sample per round.
    pub files: Vec<u64>,
    /// Bytes of the source tree, for the ratio column.
    pub source_bytes: u64,
}

impl SizeCell {
    pub fn median_bytes(&self) -> Option<f64> {
        median(self.bytes.iter().map(|&b| b as f64).collect())
    }

    fn median_files(&self) -> Option<f64> {
        median(self.files.iter().map(|&b| b as f64).collect())
    }
}

#[derive(Default)]
pub struct Results {
    pub cells: Vec<Cell>,
    /// Output sizes (snapshot repositories, archives); empty for `copy`.
    pub sizes: Vec<SizeCell>,
}

impl Results {
    pub fn cell(&mut self, corpus: &str, scenario: &str, tool: &str) -> &mut Cell {
        let i = match self.position(corpus, scenario, tool) {
            Some(i) => i,
            None => {
                self.cells.push(Cell {
                    corpus: corpus.into(),
                    scenario: scenario.into(),
                    tool: tool.into(),
                    runs: Vec::new(),
                    problems: Vec::new(),
                    last_stderr: String::new(),
                });
                self.cells.len() - 1
            }
        };
        &mut self.cells[i]
    }

    pub fn size(
        &mut self,
        corpus: &str,
        scenario: &str,
        tool: &str,
        source_bytes: u64,
    ) -> &mut SizeCell {
        let i = match self.size_position(corpus, scenario, tool) {
            Some(i) => i,
            None => {
                self.sizes.push(SizeCell {
                    corpus: corpus.into(),
                    scenario: scenario.into(),
                    tool: tool.into(),
                    bytes: Vec::new(),
                    files: Vec::new(),
                    source_bytes,
                });
                self.sizes.len() - 1
            }
        };
        &mut self.sizes[i]
    }

    pub fn get_size(&self, corpus: &str, scenario: &str, tool: &str) -> Option<&SizeCell> {
        self.size_position(corpus, scenario, tool)
            .map(|i| &self.sizes[i])
    }

    fn size_position(&self, corpus: &str, scenario: &str, tool: &str) -> Option<usize> {
        self.sizes
            .iter()
            .position(|c| c.corpus == corpus && c.scenario == scenario && c.tool == tool)
    }

    pub fn size_rows(&self) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let header = vec![
            "corpus",
            "after",
            "tool",
            "median MB",
            "min MB",
            "max MB",
            "files",
            "of source",
        ];
        let mb = |b: Option<f64>| b.map_or("-".into(), |b| format!("{:.1}", b / 1e6));
        let rows = self
            .sizes
            .iter()
            .map(|c| {
                let med = c.median_bytes();
                vec![
                    c.corpus.clone(),
                    c.scenario.clone(),
                    c.tool.clone(),
                    mb(med),
                    mb(c.bytes.iter().min().map(|&b| b as f64)),
                    mb(c.bytes.iter().max().map(|&b| b as f64)),
                    c.median_files().map_or("-".into(), |f| format!("{f:.0}")),
                    med.filter(|_| c.source_bytes > 0).map_or("-".into(), |b| {
                        format!("{:.1}%", b / c.source_bytes as f64 * 100.0)
                    }),
                ]
            })
            .collect();
        (header, rows)
    }

    pub fn get(&self, corpus: &str, scenario: &str, tool: &str) -> Option<&Cell> {
        self.position(corpus, scenario, tool)
            .map(|i| &self.cells[i])
    }

    fn position(&self, corpus: &str, scenario: &str, tool: &str) -> Option<usize> {
        self.cells
            .iter()
            .position(|c| c.corpus == corpus && c.scenario == scenario && c.tool == tool)
    }

    pub fn all_valid(&self) -> bool {
        self.cells.iter().all(Cell::valid)
    }

    pub fn table_rows(&self) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let header = vec![
            "corpus",
            "scenario",
            "tool",
            "median s",
            "min s",
            "max s",
            "peak RSS MiB",
            "CPU s",
            "others' CPU",
            "runs",
            "check",
        ];
        let rows = self
            .cells
            .iter()
            .map(|c| {
                let walls = c.walls();
                let min = walls.iter().copied().reduce(f64::min);
                let max = walls.iter().copied().reduce(f64::max);
                vec![
                    c.corpus.clone(),
                    c.scenario.clone(),
                    c.tool.clone(),
                    secs(c.median_wall()),
                    secs(min),
                    secs(max),
                    c.max_rss_kib()
                        .map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
                    secs(c.median_cpu()),
                    c.max_others_load()
                        .map_or("-".into(), |l| format!("{l:.2}")),
                    c.runs.len().to_string(),
                    if c.valid() {
                        "ok".into()
                    } else {
                        "INVALID".into()
                    },
                ]
            })
            .collect();
        (header, rows)
    }

    /// A `run` line with the parameters (`params`: `key=value` pairs), then
    /// one line per cell, `key=value` fields; read back by [`parse_data`].
    pub fn data_block(&self, params: &str) -> String {
        let mut out = format!("haul-bench-data v1\nrun {params}\n");
        for c in &self.cells {
            let samples: Vec<String> = c.walls().iter().map(|w| format!("{w:.4}")).collect();
            let _ = writeln!(
                out,
                "cell corpus={} scenario={} tool={} median_s={} rss_kib={} cpu_s={} others_load={} valid={} samples={}",
                c.corpus,
                c.scenario,
                c.tool,
                c.median_wall().map_or("-".into(), |m| format!("{m:.4}")),
                c.max_rss_kib().map_or("-".into(), |k| k.to_string()),
                c.median_cpu().map_or("-".into(), |m| format!("{m:.3}")),
                c.max_others_load().map_or("-".into(), |l| format!("{l:.2}")),
                u8::from(c.valid()),
                samples.join(",")
            );
        }
        for c in &self.sizes {
            let samples: Vec<String> = c.bytes.iter().map(u64::to_string).collect();
            let _ = writeln!(
                out,
                "size corpus={} scenario={} tool={} median_bytes={} files={} samples={}",
                c.corpus,
                c.scenario,
                c.tool,
                c.median_bytes().map_or("-".into(), |m| format!("{m:.0}")),
                c.median_files().map_or("-".into(), |f| format!("{f:.0}")),
                samples.join(",")
            );
        }
        out
    }
}

fn secs(x: Option<f64>) -> String {
    x.map_or("-".into(), |s| format!("{s:.3}"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    /// A run involved failed or did not verify: the number means nothing.
    Invalid,
    NotRun,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::Invalid => "INVALID",
            Verdict::NotRun => "not run",
        }
    }
}

pub struct Goal {
    pub label: String,
    pub value: String,
    pub target: String,
    pub verdict: Verdict,
}

impl Goal {
    fn verdict(value: Option<f64>, cells: &[Option<&Cell>], max: f64) -> Verdict {
        match value {
            None => Verdict::NotRun,
            Some(_) if !cells.iter().all(|c| c.is_some_and(Cell::valid)) => Verdict::Invalid,
            Some(v) if v <= max => Verdict::Pass,
            Some(_) => Verdict::Miss,
        }
    }

    /// `num`'s wall time over `den`'s in `scenario` on `corpus`, at most
    /// `max`, read two ways that must both hold: the ratio of the medians,
    /// and the median of the rounds' own ratios (each round runs the tools
    /// one after the other, so a burst of load from other machines on the
    /// host tends to hit both of one round). On a shared host the two
    /// differ by tens of percent; a goal inside that spread is not met.
    pub fn ratio(
        r: &Results,
        corpus: &str,
        scenario: &str,
        num: &str,
        den: &str,
        max: f64,
    ) -> Goal {
        let (a, b) = (r.get(corpus, scenario, num), r.get(corpus, scenario, den));
        let of_medians = a
            .and_then(Cell::median_wall)
            .zip(b.and_then(Cell::median_wall))
            .map(|(x, y)| x / y);
        let of_rounds = a.zip(b).and_then(|(a, b)| per_round_median(a, b));
        let value = of_medians.map(|m| of_rounds.map_or(m, |p| m.max(p)));
        Goal {
            label: format!("{corpus} {scenario}: {num}/{den} wall time"),
            value: match (of_medians, of_rounds) {
                (Some(m), Some(p)) => format!("{m:.3} (rounds {p:.3})"),
                (Some(m), None) => format!("{m:.3}"),
                _ => "-".into(),
            },
            target: format!("<= {max:.2}"),
            verdict: Goal::verdict(value, &[a, b], max),
        }
    }

    /// `median size(num) / median size(den)` after `scenario` on `corpus`,
    /// at most `max`; invalid if a timed run of that scenario was.
    pub fn size_ratio(
        r: &Results,
        corpus: &str,
        scenario: &str,
        num: &str,
        den: &str,
        max: f64,
    ) -> Goal {
        let (a, b) = (
            r.get_size(corpus, scenario, num),
            r.get_size(corpus, scenario, den),
        );
        let value = a
            .and_then(SizeCell::median_bytes)
            .zip(b.and_then(SizeCell::median_bytes))
            .filter(|&(_, y)| y > 0.0)
            .map(|(x, y)| x / y);
        let runs = [r.get(corpus, scenario, num), r.get(corpus, scenario, den)];
        Goal {
            label: format!("{corpus} {scenario}: {num} size / {den} size"),
            value: value.map_or("-".into(), |v| format!("{v:.3}")),
            target: format!("<= {max:.2}"),
            verdict: Goal::verdict(value, &runs, max),
        }
    }

    /// Largest peak RSS of `tool` over every scenario on `corpus`.
    pub fn rss(r: &Results, corpus: &str, tool: &str, max_mib: f64) -> Goal {
        let cells: Vec<Option<&Cell>> = r
            .cells
            .iter()
            .filter(|c| c.corpus == corpus && c.tool == tool)
            .map(Some)
            .collect();
        let value = cells
            .iter()
            .flatten()
            .filter_map(|c| c.max_rss_kib())
            .max()
            .map(|k| k as f64 / 1024.0);
        Goal {
            label: format!("{corpus}: {tool} peak RSS"),
            value: value.map_or("-".into(), |v| format!("{v:.1} MiB")),
            target: format!("<= {max_mib:.0} MiB"),
            verdict: Goal::verdict(value, &cells, max_mib),
        }
    }

    pub fn rows(goals: &[Goal]) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let rows = goals
            .iter()
            .map(|g| {
                vec![
                    g.label.clone(),
                    g.value.clone(),
                    g.target.clone(),
                    g.verdict.as_str().into(),
                ]
            })
            .collect();
        (vec!["goal", "measured", "target", "verdict"], rows)
    }
}

/// A table a subcommand adds to its report, after the goals.
pub struct Section {
    pub title: String,
    /// Markdown paragraph above the table in the results file.
    pub intro: String,
    pub header: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

/// One line of a side-by-side table: haul against its peer in one scenario,
/// with both medians, their ratio, the rounds' spread, and the goal.
pub struct Pair {
    pub measure: String,
    pub haul: String,
    pub peer: String,
    pub ratio: String,
    pub spread: String,
    pub goal: String,
    pub verdict: Verdict,
}

/// Smallest and largest of `v`, shown as `lo-hi`.
fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().reduce(f64::min);
    let hi = v.iter().copied().reduce(f64::max);
    lo.zip(hi)
        .map_or("-".into(), |(lo, hi)| format!("{lo:.3}-{hi:.3}"))
}

impl Pair {
    /// Wall time of `haul` over `peer` in `scenario`: read both ways and
    /// judged exactly as [`Goal::ratio`].
    pub fn time(
        r: &Results,
        corpus: &str,
        scenario: &str,
        (haul, peer): (&str, &str),
        measure: String,
        max: f64,
    ) -> Pair {
        let goal = Goal::ratio(r, corpus, scenario, haul, peer, max);
        let (a, b) = (r.get(corpus, scenario, haul), r.get(corpus, scenario, peer));
        let ratios = a.zip(b).and_then(|(a, b)| per_round_ratios(a, b));
        Pair {
            measure,
            haul: secs(a.and_then(Cell::median_wall)),
            peer: secs(b.and_then(Cell::median_wall)),
            ratio: goal.value,
            spread: ratios.as_deref().map_or("-".into(), spread),
            goal: goal.target,
            verdict: goal.verdict,
        }
    }

    /// Output size of `haul` over `peer` after `scenario`, as
    /// [`Goal::size_ratio`]; sizes in MB.
    pub fn size(
        r: &Results,
        corpus: &str,
        scenario: &str,
        (haul, peer): (&str, &str),
        measure: String,
        max: f64,
    ) -> Pair {
        let goal = Goal::size_ratio(r, corpus, scenario, haul, peer, max);
        let (a, b) = (
            r.get_size(corpus, scenario, haul),
            r.get_size(corpus, scenario, peer),
        );
        let mb = |c: Option<&SizeCell>| {
            c.and_then(SizeCell::median_bytes)
                .map_or("-".into(), |b| format!("{:.1} MB", b / 1e6))
        };
        let ratios: Option<Vec<f64>> = a.zip(b).and_then(|(a, b)| {
            (a.bytes.len() == b.bytes.len()).then(|| {
                a.bytes
                    .iter()
                    .zip(&b.bytes)
                    .filter(|(_, &y)| y > 0)
                    .map(|(&x, &y)| x as f64 / y as f64)
                    .collect()
            })
        });
        Pair {
            measure,
            haul: mb(a),
            peer: mb(b),
            ratio: goal.value,
            spread: ratios.as_deref().map_or("-".into(), spread),
            goal: goal.target,
            verdict: goal.verdict,
        }
    }

    /// Peak RSS of `haul` in `scenario`, at most `max_mib`; the peer's is
    /// shown beside it for scale but not judged.
    pub fn rss(
        r: &Results,
        corpus: &str,
        scenario: &str,
        (haul, peer): (&str, &str),
        measure: String,
        max_mib: f64,
    ) -> Pair {
        let (a, b) = (r.get(corpus, scenario, haul), r.get(corpus, scenario, peer));
        let mib = |c: Option<&Cell>| c.and_then(Cell::max_rss_kib).map(|k| k as f64 / 1024.0);
        let show = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} MiB"));
        let value = mib(a);
        Pair {
            measure,
            haul: show(value),
            peer: show(mib(b)),
            ratio: "-".into(),
            spread: "-".into(),
            goal: format!("<= {max_mib:.0} MiB"),
            verdict: Goal::verdict(value, &[a], max_mib),
        }
    }

    /// The pairs as a table under `title`.
    pub fn section(title: &str, intro: &str, pairs: &[Pair]) -> Section {
        Section {
            title: title.into(),
            intro: intro.into(),
            header: vec![
                "measure",
                "haul median",
                "peer median",
                "ratio",
                "spread",
                "goal",
                "verdict",
            ],
            rows: pairs
                .iter()
                .map(|p| {
                    vec![
                        p.measure.clone(),
                        p.haul.clone(),
                        p.peer.clone(),
                        p.ratio.clone(),
                        p.spread.clone(),
                        p.goal.clone(),
                        p.verdict.as_str().into(),
                    ]
                })
                .collect(),
        }
    }
}

/// A plain-text table with aligned columns (numbers right-aligned).
pub fn text_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let numeric = |s: &str| s.parse::<f64>().is_ok() || s.ends_with(" MiB") || s.ends_with(" MB");
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, &w)| {
                if numeric(c) {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    line(
        widths
            .iter()
            .map(|&w| &"------------------------------------------------------------"[..w.min(60)])
            .collect(),
    );
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

pub fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", header.join(" | "));
    let _ = writeln!(out, "|{}", " --- |".repeat(header.len()));
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out
}

/// One cell as read back from a results file.
pub struct DataRow {
    pub corpus: String,
    pub scenario: String,
    pub tool: String,
    pub median_s: Option<f64>,
    pub rss_kib: Option<u64>,
    pub valid: bool,
}

/// The parameters on the `run` line of a results file's data block.
pub fn parse_params(text: &str) -> Option<&str> {
    text.lines()
        .skip_while(|l| l.trim() != "haul-bench-data v1")
        .find_map(|l| l.strip_prefix("run "))
}

/// Reads the `haul-bench-data v1` block out of a results file.
pub fn parse_data(text: &str) -> Vec<DataRow> {
    let mut rows = Vec::new();
    for line in text
        .lines()
        .skip_while(|l| l.trim() != "haul-bench-data v1")
    {
        let Some(rest) = line.strip_prefix("cell ") else {
            continue;
        };
        let field = |key: &str| {
            rest.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                .unwrap_or("-")
                .to_owned()
        };
        rows.push(DataRow {
            corpus: field("corpus"),
            scenario: field("scenario"),
            tool: field("tool"),
            median_s: field("median_s").parse().ok(),
            rss_kib: field("rss_kib").parse().ok(),
            valid: field("valid") == "1",
        });
    }
    rows
}

/// One output size as read back from a results file.
pub struct SizeRow {
    pub corpus: String,
    pub scenario: String,
    pub tool: String,
    pub median_bytes: Option<f64>,
}

/// Reads the `size` lines of the `haul-bench-data v1` block.
pub fn parse_sizes(text: &str) -> Vec<SizeRow> {
    text.lines()
        .skip_while(|l| l.trim() != "haul-bench-data v1")
        .filter_map(|l| l.strip_prefix("size "))
        .map(|rest| {
            let field = |key: &str| {
                rest.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                    .unwrap_or("-")
                    .to_owned()
            };
            SizeRow {
                corpus: field("corpus"),
                scenario: field("scenario"),
                tool: field("tool"),
                median_bytes: field("median_bytes").parse().ok(),
            }
        })
        .collect()
}

pub struct Comparison {
    /// Set when the two runs used different parameters (scale, seed, ...).
    pub warning: Option<String>,
    pub header: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
    /// Output sizes, when the new run recorded any.
    pub size_header: Vec<&'static str>,
    pub size_rows: Vec<Vec<String>>,
}

impl Comparison {
    pub fn text(&self) -> String {
        let mut out = text_table(&self.header, &self.rows);
        if !self.size_rows.is_empty() {
            out.push('\n');
            out.push_str(&text_table(&self.size_header, &self.size_rows));
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = markdown_table(&self.header, &self.rows);
        if !self.size_rows.is_empty() {
            out.push('\n');
            out.push_str(&markdown_table(&self.size_header, &self.size_rows));
        }
        out
    }
}

/// Compares the data blocks of two results files, cell by cell.
pub fn compare(base_text: &str, new_text: &str) -> Option<Comparison> {
    let (base, new) = (parse_data(base_text), parse_data(new_text));
    if base.is_empty() || new.is_empty() {
        return None;
    }
    let warning = match (parse_params(base_text), parse_params(new_text)) {
        (Some(b), Some(n)) if b == n => None,
        (b, n) => Some(format!(
            "the runs differ in parameters: baseline `{}`, new `{}`",
            b.unwrap_or("?"),
            n.unwrap_or("?")
        )),
    };
    let (header, rows) = comparison(&base, &new);
    let (size_header, size_rows) = size_comparison(&parse_sizes(base_text), &parse_sizes(new_text));
    Some(Comparison {
        warning,
        header,
        rows,
        size_header,
        size_rows,
    })
}

/// Baseline vs current output sizes.
fn size_comparison(base: &[SizeRow], new: &[SizeRow]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let header = vec!["corpus", "after", "tool", "base MB", "new MB", "change"];
    let mb = |b: Option<f64>| b.map_or("-".into(), |b| format!("{:.1}", b / 1e6));
    let rows = new
        .iter()
        .map(|n| {
            let b = base
                .iter()
                .find(|b| b.corpus == n.corpus && b.scenario == n.scenario && b.tool == n.tool)
                .and_then(|b| b.median_bytes);
            let change = match (b, n.median_bytes) {
                (Some(x), Some(y)) if x > 0.0 => format!("{:+.1}%", (y / x - 1.0) * 100.0),
                _ => "-".into(),
            };
            vec![
                n.corpus.clone(),
                n.scenario.clone(),
                n.tool.clone(),
                mb(b),
                mb(n.median_bytes),
                change,
            ]
        })
        .collect();
    (header, rows)
}

/// Baseline vs current, cell by cell: medians, change, peak RSS.
fn comparison(base: &[DataRow], new: &[DataRow]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let header = vec![
        "corpus",
        "scenario",
        "tool",
        "base s",
        "new s",
        "change",
        "base RSS MiB",
        "new RSS MiB",
    ];
    let mib = |k: Option<u64>| k.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0));
    let mark = |r: &DataRow, s: String| if r.valid { s } else { format!("{s} (invalid)") };
    let rows = new
        .iter()
        .map(|n| {
            let b = base
                .iter()
                .find(|b| b.corpus == n.corpus && b.scenario == n.scenario && b.tool == n.tool);
            let change = match (b.and_then(|b| b.median_s), n.median_s) {
                (Some(x), Some(y)) if x > 0.0 => format!("{:+.1}%", (y / x - 1.0) * 100.0),
                _ => "-".into(),
            };
            vec![
                n.corpus.clone(),
                n.scenario.clone(),
                n.tool.clone(),
                b.map_or("-".into(), |b| mark(b, secs(b.median_s))),
                mark(n, secs(n.median_s)),
                change,
                mib(b.and_then(|b| b.rss_kib)),
                mib(n.rss_kib),
            ]
        })
        .collect();
    (header, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn ratio_goal_needs_medians_and_rounds() {
        let mut r = Results::default();
        let put = |r: &mut Results, tool: &str, walls: &[f64]| {
            let c = r.cell("kernel", "restore", tool);
            c.runs.extend(walls.iter().map(|&w| Run {
                wall_secs: w,
                cpu_secs: w,
                max_rss_kib: 1,
                status: std::os::unix::process::ExitStatusExt::from_raw(0),
                others_load: 0.0,
                stderr: String::new(),
            }));
        };
        // Medians 2.6 / 5.0 = 0.52, but round by round 0.7, 0.7, 0.4, 0.7,
        // 0.4: the median of those is 0.7.
        put(&mut r, "haul", &[2.1, 3.5, 2.6, 2.8, 2.4]);
        put(&mut r, "tar", &[3.0, 5.0, 6.5, 4.0, 6.0]);
        let g = Goal::ratio(&r, "kernel", "restore", "haul", "tar", 0.6);
        assert_eq!(g.value, "0.520 (rounds 0.700)");
        assert!(matches!(g.verdict, Verdict::Miss));
        let g = Goal::ratio(&r, "kernel", "restore", "haul", "tar", 0.75);
        assert!(matches!(g.verdict, Verdict::Pass));
        // A tool missing a round: only the medians are compared.
        put(&mut r, "cp", &[4.0]);
        let g = Goal::ratio(&r, "kernel", "restore", "haul", "cp", 0.7);
        assert_eq!(g.value, "0.650");
        assert!(matches!(g.verdict, Verdict::Pass));
    }

    #[test]
    fn pair_shows_medians_ratio_and_spread() {
        let mut r = Results::default();
        let put = |r: &mut Results, tool: &str, walls: &[f64]| {
            let c = r.cell("kernel", "zip-create", tool);
            c.runs.extend(walls.iter().map(|&w| Run {
                wall_secs: w,
                cpu_secs: w,
                max_rss_kib: 2048,
                status: std::os::unix::process::ExitStatusExt::from_raw(0),
                others_load: 0.0,
                stderr: String::new(),
            }));
        };
        put(&mut r, "haul", &[1.0, 2.0, 1.5]);
        put(&mut r, "zip", &[4.0, 4.0, 5.0]);
        let p = Pair::time(&r, "kernel", "zip-create", ("haul", "zip"), "x".into(), 0.4);
        assert_eq!((p.haul.as_str(), p.peer.as_str()), ("1.500", "4.000"));
        assert_eq!(p.ratio, "0.375 (rounds 0.300)");
        assert_eq!(p.spread, "0.250-0.500");
        assert!(matches!(p.verdict, Verdict::Pass));
        let p = Pair::rss(&r, "kernel", "zip-create", ("haul", "zip"), "x".into(), 1.0);
        assert_eq!(p.haul, "2.0 MiB");
        assert!(matches!(p.verdict, Verdict::Miss));
        let sizes = r.size("kernel", "zip-create", "haul", 100);
        sizes.bytes.extend([51, 50]);
        r.size("kernel", "zip-create", "zip", 100)
            .bytes
            .extend([50, 50]);
        let p = Pair::size(
            &r,
            "kernel",
            "zip-create",
            ("haul", "zip"),
            "x".into(),
            1.05,
        );
        assert_eq!(
            (p.ratio.as_str(), p.spread.as_str()),
            ("1.010", "1.000-1.020")
        );
        assert!(matches!(p.verdict, Verdict::Pass));
    }

    #[test]
    fn base_ratio_reads_the_spread() {
        let mut r = Results::default();
        let put = |r: &mut Results, tool: &str, walls: &[f64]| {
            let c = r.cell("kernel", "full", tool);
            c.runs.extend(walls.iter().map(|&w| Run {
                wall_secs: w,
                cpu_secs: w,
                max_rss_kib: 1,
                status: std::os::unix::process::ExitStatusExt::from_raw(0),
                others_load: 0.0,
                stderr: String::new(),
            }));
        };
        // Rounds 1.1, 0.9, 1.05: slower in the median, but 1 is inside.
        put(&mut r, "haul", &[1.1, 0.9, 2.1]);
        put(&mut r, HAUL_BASE, &[1.0, 1.0, 2.0]);
        let b = &BaseRatio::all(&r)[0];
        assert_eq!(b.of_rounds, Some(1.05));
        assert_eq!(b.no_slowdown(), Some(true));
        assert_eq!(b.verdict().0, "no slowdown");
        // Every round slower: beyond the spread.
        let mut r = Results::default();
        put(&mut r, "haul", &[1.1, 1.2, 2.4]);
        put(&mut r, HAUL_BASE, &[1.0, 1.0, 2.0]);
        let b = &BaseRatio::all(&r)[0];
        assert_eq!(b.no_slowdown(), Some(false));
        assert!(b.verdict().1.contains("every round slower"));
    }

    #[test]
    fn data_block_round_trips() {
        let text = "# title\n```text\nhaul-bench-data v1\nrun scale=1\ncell corpus=kernel scenario=full tool=haul median_s=1.5000 rss_kib=2048 cpu_s=0.1 valid=1 samples=1.5\n```\n";
        let rows = parse_data(text);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].corpus.as_str(), rows[0].median_s, rows[0].rss_kib),
            ("kernel", Some(1.5), Some(2048))
        );
        assert!(rows[0].valid);
        assert_eq!(parse_params(text), Some("scale=1"));
        assert!(parse_sizes(text).is_empty());
    }

    #[test]
    fn sizes_round_trip() {
        let mut r = Results::default();
        let c = r.size("kernel", "first-create", "haul", 1000);
        c.bytes.extend([300, 310, 305]);
        c.files.extend([7, 7, 7]);
        let text = r.data_block("scale=1");
        let sizes = parse_sizes(&text);
        assert_eq!(sizes.len(), 1);
        assert_eq!(sizes[0].median_bytes, Some(305.0));
        assert!(parse_data(&text).is_empty());
        let cmp = compare(
            &format!("{text}cell corpus=kernel scenario=x tool=haul median_s=1 valid=1\n"),
            &format!("{text}cell corpus=kernel scenario=x tool=haul median_s=2 valid=1\n"),
        )
        .expect("both have data");
        assert_eq!(cmp.size_rows.len(), 1);
        assert_eq!(cmp.size_rows[0][5], "+0.0%");
    }
}
