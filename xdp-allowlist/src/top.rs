//! `top`: a live view of the refused sources, refreshed from the pinned maps.
//!
//! This module keeps the state between refreshes (rates, sort order, rate
//! history) as plain data, tested without a terminal; `view` draws it with
//! ratatui and runs the terminal loop.
//!
//! Memory stays bounded: the previous packet counts are kept only for the
//! rows of the last refresh (at most the kernel map's capacity), and a rate
//! history only for the first [`HISTORY_ROWS`] rows in the current order.

mod view;

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, SystemTime},
};

pub use view::run;

use crate::{
    sources::{self, RowKey, SourceRow},
    status::Status,
};

/// Samples of rate history kept per row.
pub const HISTORY: usize = 30;

/// Rows, in the current order, whose rate history is kept.
pub const HISTORY_ROWS: usize = 200;

/// What the table is ordered by; `s` cycles through them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortKey {
    /// Total packets refused, most first.
    #[default]
    Drops,
    /// Packets per second over the last refresh, highest first.
    Rate,
    /// Most recently seen first.
    LastSeen,
}

impl SortKey {
    /// The next key in the cycle.
    pub fn next(self) -> Self {
        match self {
            SortKey::Drops => SortKey::Rate,
            SortKey::Rate => SortKey::LastSeen,
            SortKey::LastSeen => SortKey::Drops,
        }
    }

    /// The name shown in the header (`sort: drops`).
    pub fn label(self) -> &'static str {
        match self {
            SortKey::Drops => "drops",
            SortKey::Rate => "rate",
            SortKey::LastSeen => "last seen",
        }
    }
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct TopRow {
    pub row: SourceRow,
    /// Packets per second since the previous refresh; `None` on the first.
    pub rate: Option<f64>,
}

/// The state of the view between refreshes.
#[derive(Debug, Default)]
pub struct State {
    pub sort: SortKey,
    /// Refusal rows, in `sort` order.
    pub rows: Vec<TopRow>,
    pub status: Option<Status>,
    /// When the maps were last read (wall clock).
    pub read_at: Option<SystemTime>,
    /// The last read's error, shown until a read succeeds.
    pub error: Option<String>,
    previous: HashMap<RowKey, u64>,
    history: HashMap<RowKey, VecDeque<f64>>,
}

impl State {
    /// Takes a new reading. `elapsed` is the time since the previous one.
    pub fn update(
        &mut self,
        rows: Vec<SourceRow>,
        status: Status,
        elapsed: Duration,
        now: SystemTime,
    ) {
        let secs = elapsed.as_secs_f64();
        let mut current = HashMap::with_capacity(rows.len());
        let mut table = Vec::with_capacity(rows.len());
        for row in rows.into_iter().filter(|r| r.kind.is_refusal()) {
            let key = row.key();
            let rate = if self.read_at.is_none() || secs <= 0.0 {
                None
            } else {
                // A row new since the last reading got all its packets in
                // between. One that shrank lost a CPU's count (that CPU's
                // table replaced it) while others kept theirs: its packets
                // since are unknown, and taking its whole total would show
                // a spike that never happened.
                match self.previous.get(&key) {
                    None => Some(row.packets as f64 / secs),
                    Some(&before) if row.packets >= before => {
                        Some((row.packets - before) as f64 / secs)
                    }
                    Some(_) => None,
                }
            };
            current.insert(key, row.packets);
            table.push(TopRow { row, rate });
        }
        self.previous = current;
        self.rows = table;
        self.sort_rows();

        // Record a sample for the rows whose history is kept, forget the rest.
        let mut history = HashMap::with_capacity(HISTORY_ROWS.min(self.rows.len()));
        for top in self.rows.iter().take(HISTORY_ROWS) {
            let key = top.row.key();
            let mut samples = self.history.remove(&key).unwrap_or_default();
            if let Some(rate) = top.rate {
                if samples.len() == HISTORY {
                    samples.pop_front();
                }
                samples.push_back(rate);
            }
            history.insert(key, samples);
        }
        self.history = history;

        self.status = Some(status);
        self.read_at = Some(now);
        self.error = None;
    }

    /// Records a failed reading; the last good one stays on screen.
    pub fn failed(&mut self, error: String) {
        self.error = Some(error);
    }

    /// Switches to the next sort key and orders the rows by it.
    pub fn cycle_sort(&mut self) {
        self.sort = self.sort.next();
        self.sort_rows();
    }

    /// The rate history of a row, oldest first (empty when not kept).
    pub fn history(&self, key: &RowKey) -> Vec<f64> {
        self.history
            .get(key)
            .map(|samples| samples.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Rows whose history is kept now (for tests of the bound).
    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    fn sort_rows(&mut self) {
        match self.sort {
            SortKey::Drops => self
                .rows
                .sort_by(|a, b| sources::by_packets(&a.row, &b.row)),
            SortKey::LastSeen => self
                .rows
                .sort_by(|a, b| sources::by_last_seen(&a.row, &b.row)),
            SortKey::Rate => self.rows.sort_by(|a, b| {
                let (ra, rb) = (a.rate.unwrap_or(0.0), b.rate.unwrap_or(0.0));
                rb.total_cmp(&ra)
                    .then_with(|| sources::by_packets(&a.row, &b.row))
            }),
        }
    }
}

/// The samples as a bar of block characters, `width` wide, newest on the
/// right, scaled to the largest sample; zero is a blank.
pub fn sparkline(samples: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

    let shown = &samples[samples.len().saturating_sub(width)..];
    let max = shown.iter().copied().fold(0.0_f64, f64::max);
    let mut line = " ".repeat(width - shown.len());
    for &sample in shown {
        if sample <= 0.0 || max <= 0.0 {
            line.push(' ');
        } else {
            // At least the lowest bar for any traffic at all.
            let level = ((sample / max) * BARS.len() as f64).ceil() as usize;
            line.push(BARS[level.clamp(1, BARS.len()) - 1]);
        }
    }
    line
}

/// A rate for the table: `-` before the second reading, else packets/s.
pub fn rate_text(rate: Option<f64>) -> String {
    match rate {
        None => "-".to_owned(),
        Some(r) if r >= 100.0 => format!("{r:.0}"),
        Some(r) => format!("{r:.1}"),
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::IpAddr};

    use super::*;
    use crate::{
        sources::Kind,
        status::{EventStatus, Status},
    };

    fn status() -> Status {
        Status {
            pin_dir: String::new(),
            generation: 1,
            active_slot: 0,
            attachments: vec![],
            services: BTreeMap::new(),
            reasons: BTreeMap::new(),
            events: EventStatus::default(),
        }
    }

    fn row(last: u8, kind: Kind, packets: u64, last_seen_s: u64) -> SourceRow {
        SourceRow::for_test(
            IpAddr::from([198, 51, 100, last]),
            "dns",
            kind,
            packets,
            last_seen_s,
        )
    }

    fn order(state: &State) -> Vec<String> {
        state
            .rows
            .iter()
            .map(|r| r.row.source.to_string())
            .collect()
    }

    const SECOND: Duration = Duration::from_secs(1);

    fn rates_by_source(state: &State) -> HashMap<String, Option<f64>> {
        state
            .rows
            .iter()
            .map(|r| (r.row.source.to_string(), r.rate))
            .collect()
    }

    #[test]
    fn rates_come_from_the_difference_between_readings() {
        let mut state = State::default();
        let now = SystemTime::UNIX_EPOCH;

        state.update(
            vec![row(1, Kind::Drop, 100, 5), row(2, Kind::Drop, 10, 6)],
            status(),
            SECOND,
            now,
        );
        assert!(state.rows.iter().all(|r| r.rate.is_none()), "no rate yet");

        state.update(
            vec![
                row(1, Kind::Drop, 104, 7),
                row(2, Kind::Drop, 50, 8),
                row(3, Kind::WouldDrop, 6, 9),
                row(4, Kind::Access, 1000, 9),
            ],
            status(),
            Duration::from_secs(2),
            now,
        );

        let rates = rates_by_source(&state);
        assert_eq!(rates["198.51.100.1"], Some(2.0));
        assert_eq!(rates["198.51.100.2"], Some(20.0));
        assert_eq!(rates["198.51.100.3"], Some(3.0), "new row: all its packets");
        assert!(
            !rates.contains_key("198.51.100.4"),
            "access rows are not shown"
        );

        // A total that shrank (a CPU's table replaced the source) has no
        // known rate, rather than the spike its whole total would make.
        state.update(
            vec![row(1, Kind::Drop, 60, 9), row(2, Kind::Drop, 51, 9)],
            status(),
            SECOND,
            now,
        );
        let rates = rates_by_source(&state);
        assert_eq!(rates["198.51.100.1"], None);
        assert_eq!(rates["198.51.100.2"], Some(1.0));
    }

    #[test]
    fn s_cycles_the_sort_key_and_reorders() {
        let mut state = State::default();
        let now = SystemTime::UNIX_EPOCH;
        state.update(
            vec![
                row(1, Kind::Drop, 100, 1),
                row(2, Kind::Drop, 10, 3),
                row(3, Kind::Drop, 50, 2),
            ],
            status(),
            SECOND,
            now,
        );
        state.update(
            vec![
                row(1, Kind::Drop, 101, 1),
                row(2, Kind::Drop, 40, 3),
                row(3, Kind::Drop, 55, 2),
            ],
            status(),
            SECOND,
            now,
        );
        assert_eq!(state.sort.label(), "drops");
        assert_eq!(
            order(&state),
            ["198.51.100.1", "198.51.100.3", "198.51.100.2"]
        );

        state.cycle_sort();
        assert_eq!(state.sort.label(), "rate");
        assert_eq!(
            order(&state),
            ["198.51.100.2", "198.51.100.3", "198.51.100.1"]
        );

        state.cycle_sort();
        assert_eq!(state.sort.label(), "last seen");
        assert_eq!(
            order(&state),
            ["198.51.100.2", "198.51.100.3", "198.51.100.1"]
        );

        state.cycle_sort();
        assert_eq!(state.sort, SortKey::Drops);
        assert_eq!(
            order(&state),
            ["198.51.100.1", "198.51.100.3", "198.51.100.2"]
        );
    }

    #[test]
    fn history_is_capped_in_length_and_in_rows() {
        let mut state = State::default();
        let now = SystemTime::UNIX_EPOCH;
        let many = HISTORY_ROWS as u64 + 50;
        for step in 0..(HISTORY as u64 + 10) {
            let rows = (0..many)
                .map(|i| {
                    let mut r = row(0, Kind::Drop, (i + 1) * step, 1);
                    r.source = IpAddr::from((i as u32 + 1).to_be_bytes());
                    r
                })
                .collect();
            state.update(rows, status(), SECOND, now);
        }

        assert_eq!(state.history_len(), HISTORY_ROWS);
        let top = state.rows[0].row.key();
        let samples = state.history(&top);
        assert_eq!(samples.len(), HISTORY);
        assert!(samples.iter().all(|&r| r == many as f64), "{samples:?}");
        let last = state.rows[state.rows.len() - 1].row.key();
        assert!(
            state.history(&last).is_empty(),
            "rows past the cap keep none"
        );
    }

    #[test]
    fn a_failed_reading_keeps_the_last_rows_until_the_next_good_one() {
        let mut state = State::default();
        let now = SystemTime::UNIX_EPOCH;
        state.update(vec![row(1, Kind::Drop, 1, 1)], status(), SECOND, now);

        state.failed("gone".to_owned());
        assert_eq!(state.rows.len(), 1);
        assert_eq!(state.error.as_deref(), Some("gone"));

        state.update(vec![], status(), SECOND, now);
        assert_eq!(state.error, None);
        assert!(state.rows.is_empty());
    }

    #[test]
    fn sparklines_scale_to_the_largest_sample_and_pad_on_the_left() {
        assert_eq!(sparkline(&[], 4), "    ");
        assert_eq!(sparkline(&[0.0, 7.0, 14.0], 4), "  ▄█");
        assert_eq!(sparkline(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3), "▆▇█");
        assert_eq!(sparkline(&[0.0, 0.0], 2), "  ");
    }

    #[test]
    fn rates_are_printed_briefly() {
        assert_eq!(rate_text(None), "-");
        assert_eq!(rate_text(Some(2.25)), "2.2");
        assert_eq!(rate_text(Some(1234.4)), "1234");
    }
}
