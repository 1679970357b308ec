//! The dashboard's pages, rendered on the server: the fleet (problems first) and one cluster
//! (timeline, lag, hydration, audit, flips, cutover records, events). Each page's `<main>` is also
//! served alone (`?fragment=1`): the script swaps it in when the control plane changes.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use dmf_activities::state::{FlipRecord, Gate};
use dmf_telemetry::http::Reply;

use super::super::status::{Summary, View};
use super::super::why::Why;
use super::{cluster_href, svg, Dash};
use crate::output;

/// HTML-escape text and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Bars of a cluster's phase timeline, the newest.
const TIMELINE_BARS: usize = 40;

fn page(title: &str, fragment_url: &str, main: String, fragment: bool) -> Reply {
    if fragment {
        return Reply::html(main);
    }
    Reply::html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{} · dmf</title><link rel="stylesheet" href="/assets/dashboard.css"><script src="/assets/dashboard.js" defer></script></head>
<body><header><a class="brand" href="/">dmf</a><span class="crumb">{}</span><span id="live-state" class="live">connecting…</span></header>
<main id="live" data-fragment="{}">{main}</main></body></html>"#,
        esc(title),
        esc(title),
        esc(fragment_url)
    ))
}

fn badge(phase: &str) -> String {
    format!(r#"<span class="badge phase-{}">{}</span>"#, esc(phase), esc(phase))
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1} ms")).unwrap_or_else(|| "–".into())
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_else(|| "–".into())
}

fn why_html(w: &Why) -> String {
    format!(
        r#"<div class="why {}"><b>{}</b>{}<div class="action">What to do: {}</div></div>"#,
        if w.needs_operator { "needs-operator" } else { "note" },
        esc(&w.what),
        if w.because.is_empty() { String::new() } else { format!(r#"<div class="because">{}</div>"#, esc(&dmf_db::secret::redact(&w.because))) },
        esc(&w.action)
    )
}

fn hydration(v: &View) -> String {
    let r = &v.status;
    if let Some(dms) = &v.dms_summary {
        return esc(dms);
    }
    if r.tables_total == 0 {
        return "–".into();
    }
    let pct = if r.bytes_total > 0 { (100.0 * r.bytes_copied as f64 / r.bytes_total as f64).min(100.0) } else { 100.0 };
    let mut s = format!(r#"<span class="meter"><span style="width:{pct:.0}%"></span></span> {pct:.0}%"#);
    if let Some(rate) = r.copy_rate() {
        let _ = write!(s, " · {}/s", output::bytes(rate as i64));
    }
    if let Some(eta) = r.eta_seconds() {
        let _ = write!(s, " · eta {}", output::duration(eta));
    }
    s
}

fn audit(v: &View) -> String {
    let r = &v.status;
    match (&r.audit_status, r.audit_chunks_total) {
        (Some(st), Some(total)) => {
            let mut s = format!("{} {}/{total}", esc(st), r.audit_chunks_done);
            if r.audit_differences > 0 {
                let _ = write!(s, r#" <b class="bad">{} diff</b>"#, r.audit_differences);
            }
            if let Some(p99) = r.window_p99_ms {
                let _ = write!(s, " · p99 {p99:.0} ms");
            }
            if v.audit_gate == Gate::Open {
                s.push_str(" · gate open");
            }
            s
        }
        _ => "–".into(),
    }
}

/// `GET /`: the fleet. Rendered once per change of the control plane, whatever the pages open.
pub(crate) async fn fleet(dash: &Dash, fragment: bool) -> anyhow::Result<Reply> {
    let mark = dash.changes.borrow().clone();
    let mut cache = dash.fleet_cache.lock().await;
    let main = match cache.as_ref() {
        Some((at, main)) if !mark.is_empty() && *at == mark => main.clone(),
        _ => {
            let main = fleet_main(dash).await?;
            *cache = Some((mark, main.clone()));
            main
        }
    };
    drop(cache);
    Ok(page("fleet", "/?fragment=1", main, fragment))
}

async fn fleet_main(dash: &Dash) -> anyhow::Result<String> {
    let views: Vec<View> = dash.db.status(None).await?.into_iter().map(View::of).collect();
    let fleets = dash.db.fleets().await?;
    let completed = dash.db.completions().await?;
    let summary = Summary::of(&views);
    let mut m = String::with_capacity(64 * 1024 + views.len() * 600);
    let _ = write!(m, r#"<h1>Fleet <small>{} clusters · {}</small></h1>"#, views.len(), Utc::now().format("%H:%M:%S UTC"));
    m.push_str(r#"<section class="fleets">"#);
    for f in &fleets {
        if f.breaker_open {
            let _ = write!(m, r#"<div class="breaker open">fleet <b>{}</b>: circuit breaker OPEN — {} <span class="action">(dmf resume --fleet {})</span></div>"#, esc(&f.name), esc(f.breaker_reason.as_deref().unwrap_or("")), esc(&f.name));
        } else {
            let _ = write!(m, r#"<div class="breaker closed">fleet <b>{}</b>: circuit breaker closed</div>"#, esc(&f.name));
        }
    }
    m.push_str(r#"</section><section class="phases" id="phases">"#);
    for p in &summary.phases {
        let _ = write!(m, r#"<span class="count">{} <b>{}</b></span>"#, badge(&p.phase), p.count);
    }
    m.push_str("</section>");

    // problems first: what needs an operator, then what explains a wait
    let needs: Vec<&View> = views.iter().filter(|v| v.why.as_ref().is_some_and(|w| w.needs_operator)).collect();
    let notes: Vec<&View> = views.iter().filter(|v| v.why.as_ref().is_some_and(|w| !w.needs_operator)).collect();
    let _ = write!(m, r#"<section id="problems"><h2>Needs an operator <small>{}</small></h2>"#, needs.len());
    if needs.is_empty() {
        m.push_str(r#"<p class="quiet">Nothing needs an operator.</p>"#);
    } else {
        problem_table(&mut m, &needs);
    }
    let _ = write!(m, r#"<h2>Waiting, with a reason <small>{}</small></h2>"#, notes.len());
    if notes.is_empty() {
        m.push_str(r#"<p class="quiet">No flip going back, no guard tripping, no retry.</p>"#);
    } else {
        problem_table(&mut m, &notes);
    }
    if !summary.aborted.is_empty() {
        m.push_str("<h2>Aborted by reason</h2><ul class=\"reasons\">");
        for a in &summary.aborted {
            let links: Vec<String> = a.clusters.iter().map(|c| format!(r#"<a href="{}">{}</a>"#, cluster_href(c), esc(c))).collect();
            let _ = write!(m, "<li><b>{}</b> {}: {}</li>", esc(&a.reason), a.clusters.len(), links.join(", "));
        }
        m.push_str("</ul>");
    }
    m.push_str("</section>");

    m.push_str(r#"<section id="waves"><h2>Waves</h2><table><thead><tr><th>fleet</th><th>wave</th><th>clusters</th><th>phases</th></tr></thead><tbody>"#);
    for w in &summary.waves {
        let mut bar = String::from(r#"<span class="stack">"#);
        for p in &w.phases {
            let _ = write!(bar, r#"<span class="phase-{}" style="flex:{}" title="{} {}"></span>"#, esc(&p.phase), p.count, esc(&p.phase), p.count);
        }
        bar.push_str("</span>");
        let counts: Vec<String> = w.phases.iter().map(|p| format!("{} {}", esc(&p.phase), p.count)).collect();
        let _ = write!(m, "<tr><td>{}</td><td>{}</td><td>{}</td><td>{bar} {}</td></tr>", esc(&w.fleet), w.wave, w.clusters, counts.join(", "));
    }
    m.push_str("</tbody></table></section>");

    let points: Vec<(DateTime<Utc>, f64)> = completed.iter().enumerate().map(|(i, t)| (*t, (i + 1) as f64)).collect();
    let _ = write!(m, r#"<section><h2>Clusters completed over time</h2>{}</section>"#, svg::line("completed-chart", "clusters completed", &points, "", "no cluster completed yet"));

    let _ = write!(
        m,
        r#"<section id="clusters"><h2>Clusters</h2><input id="filter" type="search" placeholder="filter: name, phase, wave…" aria-label="filter clusters">
<table class="clusters"><thead><tr><th>cluster</th><th>wave</th><th>phase</th><th>lag</th><th>hydration</th><th>audit</th><th>why</th></tr></thead><tbody>"#
    );
    for v in &views {
        let r = &v.status;
        let phase = if r.paused { format!("{} <small>paused</small>", badge(&r.phase)) } else { badge(&r.phase) };
        let note = v.why.as_ref().map(|w| esc(&w.what)).unwrap_or_default();
        let _ = write!(
            m,
            r#"<tr data-phase="{}"><td><a href="{}">{}</a></td><td>{}</td><td>{phase}</td><td>{}</td><td>{}</td><td>{}</td><td>{note}</td></tr>"#,
            esc(&r.phase),
            cluster_href(&r.cluster),
            esc(&r.cluster),
            r.wave,
            r.lag_ms.map(|l| format!("{l} ms")).unwrap_or_else(|| "–".into()),
            hydration(v),
            audit(v),
        );
    }
    m.push_str("</tbody></table></section>");
    Ok(m)
}

fn problem_table(m: &mut String, views: &[&View]) {
    m.push_str(r#"<table class="problems"><thead><tr><th>cluster</th><th>phase</th><th>what</th><th>why</th><th>what to do</th></tr></thead><tbody>"#);
    for v in views {
        let Some(w) = &v.why else { continue };
        let _ = write!(
            m,
            r#"<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td class="because">{}</td><td>{}</td></tr>"#,
            cluster_href(&v.status.cluster),
            esc(&v.status.cluster),
            badge(&v.status.phase),
            esc(&w.what),
            esc(&dmf_db::secret::redact(w.because.lines().next().unwrap_or(""))),
            esc(&w.action)
        );
    }
    m.push_str("</tbody></table>");
}

/// `GET /cluster/NAME`.
pub(crate) async fn cluster(dash: &Dash, name: &str, hours: f64, fragment: bool, done: Option<&str>) -> anyhow::Result<Reply> {
    let Some(status) = dash.db.status(Some(name)).await?.into_iter().next() else {
        return Ok(Reply::status(404, &format!("no cluster named {name:?}")));
    };
    let v = View::of(status);
    let r = &v.status;
    let m_row = dash.db.migration_by_cluster(name).await?;
    let id = m_row.id;
    let since = Utc::now() - chrono::Duration::milliseconds((hours * 3_600_000.0) as i64);
    let db = &dash.db;
    let (lag, transitions, events, differences, cutovers, run) = tokio::try_join!(
        async { db.lag_history(id, since).await.map_err(anyhow::Error::from) },
        async { db.transitions(id).await.map_err(anyhow::Error::from) },
        async { db.events(id, 200).await.map_err(anyhow::Error::from) },
        async { db.differences(id, 50).await.map_err(anyhow::Error::from) },
        super::super::report::cluster_report(db, &m_row),
        async { db.latest_audit_run(id).await.map_err(anyhow::Error::from) },
    )?;

    let mut m = String::with_capacity(32 * 1024);
    let _ = write!(
        m,
        r#"<h1>{} {}{}</h1><p class="meta">fleet {} · wave {} · epoch {} · attempts {} · {} · {} · in this phase since {}</p>"#,
        esc(name),
        badge(&r.phase),
        if r.paused { " <small>paused</small>" } else { "" },
        esc(&r.fleet),
        r.wave,
        r.epoch,
        r.attempts,
        esc(&r.provider),
        esc(&r.replication),
        when(Some(r.phase_started_at))
    );
    if let Some(done) = done.filter(|d| matches!(*d, "resume" | "abort" | "rollback")) {
        let _ = write!(m, r#"<div class="done">Done: {done} requested, written to the event log.</div>"#);
    }
    if let Some(w) = &v.why {
        m.push_str(&why_html(w));
    }
    if dash.operators.is_some() {
        let _ = write!(
            m,
            r#"<form class="actions" method="post" action="{}/action" data-cluster="{}">
<label>action <select name="action"><option value="resume">resume</option><option value="abort">abort</option><option value="rollback">rollback</option></select></label>
<label>operator token <input name="token" type="password" autocomplete="new-password" required></label>
<label>type <b>{}</b> to confirm <input name="confirm" autocomplete="off" required></label>
<button type="submit">act</button></form>"#,
            cluster_href(name),
            esc(name),
            esc(name)
        );
    }

    // timeline: a phase entered again right away (a resume, a retry) is one bar; the last
    // TIMELINE_BARS (a flip that went back many times makes many)
    let mut bars: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = Vec::new();
    for (i, t) in transitions.iter().enumerate() {
        let end = transitions.get(i + 1).map(|n| n.at).unwrap_or_else(Utc::now);
        let Some(to) = &t.to_phase else { continue };
        match bars.last_mut() {
            Some(last) if &last.0 == to => last.2 = end,
            _ => bars.push((to.clone(), t.at, end)),
        }
    }
    let bars = &bars[bars.len().saturating_sub(TIMELINE_BARS)..];
    let _ = write!(m, r#"<section id="timeline"><h2>Phase timeline</h2>{}</section>"#, svg::timeline("timeline-chart", bars));

    // lag
    let points: Vec<(DateTime<Utc>, f64)> = lag.iter().filter_map(|s| s.lag_ms.map(|l| (s.at, l as f64))).collect();
    let latest = lag.last();
    let ranges: Vec<String> = [(1.0, "1 h"), (6.0, "6 h"), (24.0, "24 h"), (168.0, "7 d")]
        .iter()
        .map(|(h, label)| if (*h - hours).abs() < 1e-9 { format!("<b>{label}</b>") } else { format!(r#"<a href="{}?hours={h}">{label}</a>"#, cluster_href(name)) })
        .collect();
    let _ = write!(
        m,
        r#"<section id="lag"><h2>Replication lag <small>{} · now {} · {} behind · {} WAL retained</small></h2>{}</section>"#,
        ranges.join(" "),
        r.lag_ms.map(|l| format!("{l} ms")).unwrap_or_else(|| "–".into()),
        r.lag_bytes.map(output::bytes).unwrap_or_else(|| "–".into()),
        latest.and_then(|s| s.retained_bytes).map(output::bytes).unwrap_or_else(|| "–".into()),
        svg::line("lag-chart", "replication lag", &points, "ms", "no lag sample in this range yet")
    );

    // hydration
    let _ = write!(
        m,
        r#"<section id="hydration"><h2>Hydration</h2><p>{} · {} of {} · {} rows · tables {}/{}</p></section>"#,
        hydration(&v),
        output::bytes(r.bytes_copied),
        output::bytes(r.bytes_total),
        r.rows_copied,
        r.tables_done,
        r.tables_total
    );

    // audit
    m.push_str(r#"<section id="audit"><h2>Audit</h2>"#);
    let _ = write!(m, "<p>gate <b>{}</b>", v.audit_gate.as_str());
    if let Some(run) = &run {
        let _ = write!(
            m,
            " · full compare #{} <b>{}</b>: {}/{} chunks, {} rows compared, {} unsettled, {} mismatched",
            run.id,
            esc(&run.status),
            run.chunks_done,
            run.chunks_total,
            run.rows_compared,
            run.chunks_unsettled,
            run.mismatches
        );
    }
    let _ = write!(m, " · consistency window p50 {} p99 {}</p>", ms(r.window_p50_ms), ms(r.window_p99_ms));
    if differences.is_empty() {
        m.push_str(r#"<p class="quiet">No difference found.</p>"#);
    } else {
        m.push_str(r#"<table class="diffs"><thead><tr><th>table</th><th>key</th><th>kind</th><th>columns</th><th>found by</th><th>at</th></tr></thead><tbody>"#);
        for d in &differences {
            let _ = write!(
                m,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(d.table_name.as_deref().unwrap_or("")),
                esc(&d.key.as_ref().map(|k| k.to_string()).unwrap_or_default()),
                esc(&d.kind),
                esc(&d.columns.clone().unwrap_or_default().join(", ")),
                esc(&d.found_by),
                when(Some(d.at))
            );
        }
        m.push_str("</tbody></table>");
    }
    m.push_str("</section>");

    // the flip and the rollback as they stand
    m.push_str(r#"<section id="flip"><h2>Flip and rollback</h2>"#);
    flip_html(&mut m, "flip", &v.state.flip);
    flip_html(&mut m, "rollback", &v.state.rollback);
    m.push_str("</section>");

    // cutover records
    let _ = write!(m, r#"<section id="cutovers"><h2>Cutover records <small>{}</small></h2>"#, cutovers.len());
    if cutovers.is_empty() {
        m.push_str(r#"<p class="quiet">No flip or rollback has run yet.</p>"#);
    }
    for c in cutovers.iter().rev() {
        let _ = write!(m, r#"<article class="cutover {}"><h3>{} {} <small>{}</small></h3><pre>{}</pre></article>"#, esc(&c.outcome), esc(&c.way), esc(&c.outcome.to_uppercase()), when(Some(c.recorded_at)), esc(&dmf_db::secret::redact(&super::super::report::render_cutover(c))));
    }
    m.push_str("</section>");

    // events
    m.push_str(r#"<section id="events"><h2>Event log</h2><table class="events"><thead><tr><th>at</th><th>kind</th><th>phase</th><th>actor</th><th>detail</th></tr></thead><tbody>"#);
    for e in &events {
        let phase = match (&e.from_phase, &e.to_phase) {
            (Some(f), Some(t)) => format!("{} → {}", esc(f), esc(t)),
            (None, Some(t)) => esc(t),
            _ => String::new(),
        };
        let _ = write!(
            m,
            "<tr><td>{}</td><td>{}</td><td>{phase}</td><td>{}</td><td>{}</td></tr>",
            e.at.format("%m-%d %H:%M:%S%.3f"),
            esc(&e.kind),
            esc(&e.actor),
            esc(&dmf_db::secret::redact(e.detail.as_deref().unwrap_or("")))
        );
    }
    m.push_str("</tbody></table></section>");
    let fragment_url = format!("{}?fragment=1&hours={hours}", cluster_href(name));
    Ok(page(name, &fragment_url, m, fragment))
}

fn flip_html(m: &mut String, way: &str, f: &FlipRecord) {
    if f.attempts == 0 && f.last_reason.is_none() {
        let _ = write!(m, r#"<p class="quiet">No {way} has started.</p>"#);
        return;
    }
    let steps: Vec<String> = f.steps.iter().map(|s| format!("{} {}", esc(s), f.timings_ms.get(s).map(|t| format!("{t:.1} ms")).unwrap_or_default())).collect();
    let _ = write!(
        m,
        "<h3>{way}</h3><p>attempts {} · {} · pause {} · longest client stall {} · proxies {}</p><p>steps: {}</p>",
        f.attempts,
        if f.in_progress { "<b>in progress</b>" } else { "not running" },
        ms(f.held_ms),
        ms(f.longest_stall_ms),
        f.proxies.map(|p| p.to_string()).unwrap_or_else(|| "–".into()),
        if steps.is_empty() { "–".into() } else { steps.join(" → ") }
    );
    if let Some(reason) = &f.last_reason {
        let _ = write!(m, r#"<p>last reason: <span class="because">{}</span></p>"#, esc(&dmf_db::secret::redact(reason)));
    }
    if !f.undone.is_empty() {
        m.push_str("<ul class=\"undone\">");
        for u in &f.undone {
            let _ = write!(m, "<li>{} undone: {}</li>", when(u.at), esc(&dmf_db::secret::redact(&u.reason)));
        }
        m.push_str("</ul>");
    }
}
