//! Draws the `top` view with ratatui and runs its terminal loop.

use std::{
    io::IsTerminal as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::{
    layout::{Alignment, Constraint, Layout},
    style::{Color, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, Row, Table},
    DefaultTerminal, Frame,
};

use super::{rate_text, sparkline, SortKey, State, HISTORY};
use crate::{
    sources::{Clock, Kind, SourcesReader},
    stats::{ago, ports_text},
    status::{self, PROTOCOL_NAMES},
    UsageError,
};

/// Puts the terminal back (raw mode off, main screen) when dropped, also
/// when the loop returns an error. ratatui's own panic hook covers panics.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Runs the live view until `q`, Esc or Ctrl-C.
///
/// # Errors
///
/// When standard output is not a terminal (a usage error), when nothing is
/// pinned in `pin_dir`, or when the terminal fails. A reading that fails
/// after the first is shown on screen and retried at the next refresh.
pub fn run(pin_dir: &Path, interval: Duration) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        return Err(UsageError(
            "`top` draws on a terminal and standard output is not one; use `xdp-allowlist stats` (or `stats --json`) for a one-off report"
                .to_owned(),
        )
        .into());
    }
    // Read once before touching the terminal, so that a wrong --pin-dir is
    // a plain error message on a normal screen.
    let reader = SourcesReader::open(pin_dir)?;
    let mut state = State::default();
    refresh(&mut state, &reader, pin_dir, Duration::ZERO)?;

    // Armed first: setting up can fail after raw mode is on.
    let restore = Restore;
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    let result = event_loop(&mut terminal, &mut state, &reader, pin_dir, interval);
    drop(restore);
    result
}

fn refresh(
    state: &mut State,
    reader: &SourcesReader,
    pin_dir: &Path,
    elapsed: Duration,
) -> anyhow::Result<()> {
    let status = status::read(pin_dir)?;
    let clock = Clock::now();
    let rows = reader.read(&clock)?;
    state.update(rows, status, elapsed, clock.realtime);
    Ok(())
}

fn event_loop(
    terminal: &mut DefaultTerminal,
    state: &mut State,
    reader: &SourcesReader,
    pin_dir: &Path,
    interval: Duration,
) -> anyhow::Result<()> {
    let mut last_read = Instant::now();
    // Rates are over the time since the last reading that succeeded.
    let mut last_good = last_read;
    loop {
        terminal.draw(|frame| draw(frame, state, pin_dir, interval))?;

        let wait = (last_read + interval).saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            if let Event::Key(key) = event::read()? {
                if key.kind == KeyEventKind::Press {
                    match key.code {
                        KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                            return Ok(())
                        }
                        KeyCode::Char('s') => state.cycle_sort(),
                        _ => {}
                    }
                }
            }
            // Any other event (a resize) only redraws.
        }

        if last_read.elapsed() >= interval {
            last_read = Instant::now();
            match refresh(state, reader, pin_dir, last_good.elapsed()) {
                Ok(()) => last_good = last_read,
                Err(err) => state.failed(format!("{err:#}")),
            }
        }
    }
}

fn draw(frame: &mut Frame, state: &State, pin_dir: &Path, interval: Duration) {
    let services = service_rows(state);
    let services_height = (services.len() as u16 + 3).clamp(4, (frame.area().height / 3).max(4));
    let header_height = if state.error.is_some() { 2 } else { 1 };
    let [header, services_area, events_area, table_area] = Layout::vertical([
        Constraint::Length(header_height),
        Constraint::Length(services_height),
        Constraint::Length(1),
        Constraint::Min(4),
    ])
    .areas(frame.area());

    frame.render_widget(header_lines(state, pin_dir, interval), header);
    frame.render_widget(
        Table::new(
            services,
            [
                Constraint::Length(20),
                Constraint::Length(8),
                Constraint::Length(5),
                Constraint::Length(14),
                Constraint::Length(14),
                Constraint::Length(14),
            ],
        )
        .header(
            Row::new(
                ["SERVICE", "MODE", "PROTO"]
                    .map(Cell::from)
                    .into_iter()
                    .chain(["PASSED", "DROPPED", "WOULD DROP"].map(right)),
            )
            .bold(),
        )
        .block(Block::bordered().title(" services ")),
        services_area,
    );
    frame.render_widget(events_line(state), events_area);
    draw_sources(frame, state, table_area);
}

fn header_lines(state: &State, pin_dir: &Path, interval: Duration) -> Paragraph<'static> {
    let generation = state.status.as_ref().map(|s| s.generation).unwrap_or(0);
    let mut lines = vec![Line::from(vec![
        Span::raw("xdp-allowlist top").bold(),
        Span::raw(format!(
            "  generation {generation}  pin dir {}  every {}  ",
            pin_dir.display(),
            humantime::format_duration(interval)
        )),
        Span::raw(format!("sort: {} ▼", state.sort.label())).reversed(),
        Span::raw("  s: sort  q: quit"),
    ])];
    if let Some(error) = &state.error {
        lines.push(Line::from(format!("reading the maps failed (retrying): {error}")).red());
    }
    Paragraph::new(lines)
}

fn service_rows(state: &State) -> Vec<Row<'static>> {
    let mut rows = Vec::new();
    let Some(status) = &state.status else {
        return rows;
    };
    for (name, service) in &status.services {
        let mut any = false;
        for proto in PROTOCOL_NAMES {
            let Some(p) = service.protocols.get(proto) else {
                continue;
            };
            if p.passed + p.dropped + p.would_drop == 0 {
                continue;
            }
            any = true;
            rows.push(Row::new([
                Cell::from(name.clone()),
                Cell::from(service.mode),
                Cell::from(proto),
                right(p.passed.to_string()),
                right(p.dropped.to_string()),
                right(p.would_drop.to_string()),
            ]));
        }
        if !any {
            rows.push(Row::new([
                Cell::from(name.clone()),
                Cell::from(service.mode),
                Cell::from("-"),
                right("0"),
                right("0"),
                right("0"),
            ]));
        }
    }
    rows
}

fn events_line(state: &State) -> Paragraph<'static> {
    let events = state
        .status
        .as_ref()
        .map(|s| s.events.clone())
        .unwrap_or_default();
    Paragraph::new(format!(
        " events: {} sent · {} rate-limited · {} ring full · {} untracked",
        events.sent, events.rate_limited, events.ring_full, events.untracked
    ))
}

fn draw_sources(frame: &mut Frame, state: &State, area: ratatui::layout::Rect) {
    // Borders and the header row take three lines.
    let fits = usize::from(area.height.saturating_sub(3));
    let shown = &state.rows[..state.rows.len().min(fits)];
    let now = state.read_at.unwrap_or_else(std::time::SystemTime::now);

    let source_width = shown
        .iter()
        .map(|r| r.row.source.to_string().len())
        .max()
        .unwrap_or(0)
        .clamp(15, 39) as u16;
    let service_width = shown
        .iter()
        .map(|r| r.row.service.len())
        .max()
        .unwrap_or(0)
        .clamp(7, 20) as u16;
    let ports_width = shown
        .iter()
        .map(|r| ports_text(&r.row).chars().count())
        .max()
        .unwrap_or(0)
        .clamp(8, 48) as u16;

    let marked = |title: &'static str, key: SortKey| -> Cell<'static> {
        if state.sort == key {
            right(format!("{title} ▼")).reversed()
        } else {
            right(title)
        }
    };
    let header = Row::new([
        Cell::from("SOURCE"),
        Cell::from("SERVICE"),
        Cell::from("KIND"),
        marked("DROPS", SortKey::Drops),
        marked("RATE/s", SortKey::Rate),
        Cell::from("PORTS"),
        right("FIRST SEEN"),
        marked("LAST SEEN", SortKey::LastSeen),
        Cell::from(format!("LAST {HISTORY} RATES")),
    ])
    .bold();

    let mut rows: Vec<Row> = shown
        .iter()
        .map(|top| {
            let r = &top.row;
            let kind_style = match r.kind {
                Kind::Drop => Style::default().fg(Color::Red),
                Kind::WouldDrop => Style::default().fg(Color::Yellow),
                Kind::Access => Style::default(),
            };
            Row::new([
                Cell::from(r.source.to_string()),
                Cell::from(r.service.clone()),
                Cell::from(r.kind.as_str()).style(kind_style),
                right(r.packets.to_string()),
                right(rate_text(top.rate)),
                Cell::from(ports_text(r)),
                right(ago(now, r.first_seen)),
                right(ago(now, r.last_seen)),
                Cell::from(sparkline(&state.history(&r.key()), HISTORY))
                    .style(Style::default().fg(Color::Cyan)),
            ])
        })
        .collect();
    if rows.is_empty() {
        rows.push(Row::new([Cell::from("(no refused source tracked)")]));
    }

    let title = format!(
        " refused sources: {} tracked, {} shown ",
        state.rows.len(),
        shown.len()
    );
    let table = Table::new(
        rows,
        [
            Constraint::Length(source_width),
            Constraint::Length(service_width),
            Constraint::Length(10),
            Constraint::Length(12),
            Constraint::Length(9),
            Constraint::Length(ports_width),
            Constraint::Length(11),
            Constraint::Length(12),
            Constraint::Length(HISTORY as u16),
        ],
    )
    .header(header)
    .block(Block::bordered().title(title));
    frame.render_widget(table, area);
}

/// A right-aligned cell, for numbers.
fn right(text: impl Into<String>) -> Cell<'static> {
    Cell::from(Line::from(text.into()).alignment(Alignment::Right))
}
