//! Charts as inline SVG: a line over time (lag, completions) and horizontal bars (the phase
//! timeline). No script draws them; they are part of the page.

use chrono::{DateTime, Utc};

use super::pages::esc;

const W: f64 = 720.0;
const H: f64 = 180.0;
const PAD_L: f64 = 56.0;
const PAD_B: f64 = 22.0;

/// A line chart of `points` (time, value), with the value axis labelled in `unit`. Empty data
/// draws an empty frame with `empty` written in it.
pub fn line(id: &str, title: &str, points: &[(DateTime<Utc>, f64)], unit: &str, empty: &str) -> String {
    let mut out = format!(r#"<svg id="{id}" class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{}"><title>{}</title>"#, esc(title), esc(title));
    out.push_str(&format!(r#"<rect class="frame" x="{PAD_L}" y="4" width="{}" height="{}"/>"#, W - PAD_L - 4.0, H - PAD_B - 4.0));
    if points.is_empty() {
        out.push_str(&format!(r#"<text class="empty" x="{}" y="{}">{}</text></svg>"#, W / 2.0, H / 2.0, esc(empty)));
        return out;
    }
    let t0 = points.first().map(|p| p.0.timestamp_millis()).unwrap_or(0) as f64;
    let t1 = (points.last().map(|p| p.0.timestamp_millis()).unwrap_or(0) as f64).max(t0 + 1000.0);
    let vmax = nice_max(points.iter().map(|p| p.1).fold(0.0, f64::max));
    let x = |t: &DateTime<Utc>| PAD_L + (t.timestamp_millis() as f64 - t0) / (t1 - t0) * (W - PAD_L - 8.0);
    let y = |v: f64| 4.0 + (H - PAD_B - 4.0) * (1.0 - (v / vmax).clamp(0.0, 1.0));
    for i in 0..=4 {
        let v = vmax * f64::from(i) / 4.0;
        out.push_str(&format!(r#"<line class="grid" x1="{PAD_L}" x2="{}" y1="{:.1}" y2="{:.1}"/>"#, W - 4.0, y(v), y(v)));
        out.push_str(&format!(r#"<text class="axis" x="{}" y="{:.1}" text-anchor="end">{} {}</text>"#, PAD_L - 4.0, y(v) + 4.0, short(v), esc(unit)));
    }
    let first = points.first().map(|p| p.0).unwrap_or_default();
    let last = points.last().map(|p| p.0).unwrap_or_default();
    out.push_str(&format!(r#"<text class="axis" x="{PAD_L}" y="{}">{}</text>"#, H - 6.0, first.format("%H:%M:%S")));
    out.push_str(&format!(r#"<text class="axis" x="{}" y="{}" text-anchor="end">{}</text>"#, W - 4.0, H - 6.0, last.format("%H:%M:%S UTC")));
    let d: Vec<String> = points.iter().enumerate().map(|(i, (t, v))| format!("{}{:.1},{:.1}", if i == 0 { "M" } else { "L" }, x(t), y(*v))).collect();
    out.push_str(&format!(r#"<path class="line" d="{}"/>"#, d.join(" ")));
    if let Some((t, v)) = points.last() {
        out.push_str(&format!(r#"<circle class="dot" cx="{:.1}" cy="{:.1}" r="3"><title>{} {}</title></circle>"#, x(t), y(*v), short(*v), esc(unit)));
    }
    out.push_str("</svg>");
    out
}

/// Horizontal bars, one per (label, start, end); the bar's class is its label (phase colours).
pub fn timeline(id: &str, bars: &[(String, DateTime<Utc>, DateTime<Utc>)]) -> String {
    let rows = bars.len().max(1) as f64;
    let height = 8.0 + rows * 18.0 + 18.0;
    let mut out = format!(r#"<svg id="{id}" class="chart timeline" viewBox="0 0 {W} {height}" role="img" aria-label="phase timeline">"#);
    let (Some(t0), Some(t1)) = (bars.iter().map(|b| b.1).min(), bars.iter().map(|b| b.2).max()) else {
        out.push_str("</svg>");
        return out;
    };
    let span = ((t1 - t0).num_milliseconds() as f64).max(1000.0);
    let x = |t: DateTime<Utc>| 120.0 + (t - t0).num_milliseconds() as f64 / span * (W - 128.0);
    for (i, (label, start, end)) in bars.iter().enumerate() {
        let y = 6.0 + i as f64 * 18.0;
        let width = (x(*end) - x(*start)).max(2.0);
        let secs = (*end - *start).num_milliseconds() as f64 / 1000.0;
        out.push_str(&format!(r#"<text class="axis" x="114" y="{:.1}" text-anchor="end">{}</text>"#, y + 11.0, esc(label)));
        out.push_str(&format!(
            r#"<rect class="bar" fill="{}" x="{:.1}" y="{y:.1}" width="{width:.1}" height="14"><title>{} {}</title></rect>"#,
            phase_colour(label),
            x(*start),
            esc(label),
            crate::output::duration(secs)
        ));
        out.push_str(&format!(r#"<text class="axis" x="{:.1}" y="{:.1}">{}</text>"#, (x(*start) + width + 4.0).min(W - 40.0), y + 11.0, crate::output::duration(secs)));
    }
    out.push_str(&format!(r#"<text class="axis" x="120" y="{:.1}">{}</text>"#, height - 4.0, t0.format("%H:%M:%S")));
    out.push_str(&format!(r#"<text class="axis" x="{}" y="{:.1}" text-anchor="end">{}</text>"#, W - 4.0, height - 4.0, t1.format("%H:%M:%S UTC")));
    out.push_str("</svg>");
    out
}

/// A phase's colour, as the stylesheet's badges have it.
fn phase_colour(phase: &str) -> &'static str {
    match phase {
        "completed" | "rolled_back" => "#6ce9a6",
        "failed" => "#f97066",
        "aborted" | "aborting" => "#fdb022",
        "pending" => "#d0d5dd",
        "preflight" | "provisioning" | "schema" | "hydrating" => "#84caff",
        "replicating" | "validating" | "shadow_reads" => "#bd9cfe",
        "flipping" | "rolling_back" => "#fd853a",
        "flipped" | "soaking" => "#32d583",
        _ => "#98a2b3",
    }
}

/// A round upper bound for an axis.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * magnitude >= v {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

fn short(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.fract() == 0.0 || v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_chart_escapes_its_title_and_scales_to_a_round_maximum() {
        let t = |s: i64| DateTime::<Utc>::from_timestamp(1_700_000_000 + s, 0).unwrap();
        let svg = line("lag", "lag <of> \"x\"", &[(t(0), 3.0), (t(10), 7.0), (t(20), 0.0)], "ms", "none");
        assert!(svg.contains("lag &lt;of&gt; &quot;x&quot;"), "{svg}");
        assert!(svg.contains(r#"class="line" d="M"#), "{svg}");
        assert!(svg.contains(">10 ms<"), "axis up to 10: {svg}");
        assert!(line("lag", "t", &[], "ms", "no samples yet").contains("no samples yet"));
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(430.0), 500.0);
    }
}
