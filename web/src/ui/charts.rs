//! Pull and push charts, drawn on the server as SVG with plotters' SVG backend (no JavaScript,
//! no fonts or bitmaps: text is left to the browser). Every value comes from our own counts;
//! the only text in a chart is numbers, `MM-DD` dates and fixed series names.

use plotters::prelude::*;

use atcr_query::holds::{day_string, days_from_string};

/// One line of a chart.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: RGBColor,
    /// (`YYYY-MM-DD`, value), in day order.
    pub points: Vec<(String, u64)>,
}

pub const PULLS: RGBColor = RGBColor(37, 99, 235);
pub const PUSHES: RGBColor = RGBColor(217, 119, 6);
pub const ATCR_PULLS: RGBColor = RGBColor(22, 163, 74);

const WIDTH: u32 = 640;
const HEIGHT: u32 = 240;

/// A line chart of `series` over days, as an SVG document; `None` when there is nothing to draw.
/// A series' value holds from its point until the next (counters are cumulative or daily).
pub fn line_chart(series: &[Series<'_>]) -> Option<String> {
    let days: Vec<(usize, i64, u64)> = series
        .iter()
        .enumerate()
        .flat_map(|(index, line)| {
            line.points.iter().filter_map(move |(day, value)| days_from_string(day).map(|day| (index, day, *value)))
        })
        .collect();
    let first = days.iter().map(|(_, day, _)| *day).min()?;
    let last = days.iter().map(|(_, day, _)| *day).max()?.max(first + 1);
    let top = days.iter().map(|(_, _, value)| *value).max().unwrap_or(0).max(1);
    let top = top + top / 10 + 1;
    let mut svg = String::new();
    let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        let label_style = ("sans-serif", 12).into_font().color(&RGBColor(100, 116, 139));
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(24)
            .y_label_area_size(48)
            .build_cartesian_2d(first..last, 0u64..top)?;
        chart
            .configure_mesh()
            .light_line_style(RGBColor(241, 245, 249))
            .max_light_lines(1)
            .bold_line_style(RGBColor(203, 213, 225))
            .axis_style(RGBColor(148, 163, 184))
            .x_labels(6)
            .y_labels(5)
            .label_style(label_style.clone())
            .x_label_formatter(&|day| day_string(*day).get(5..).unwrap_or_default().to_string())
            .y_label_formatter(&|value| value.to_string())
            .draw()?;
        for (index, line) in series.iter().enumerate() {
            let points: Vec<(i64, u64)> =
                days.iter().filter(|(of, _, _)| *of == index).map(|(_, day, value)| (*day, *value)).collect();
            if points.is_empty() {
                continue;
            }
            let color = line.color;
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
                .label(line.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            chart.draw_series(points.iter().map(|point| Circle::new(*point, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(RGBColor(203, 213, 225))
            .label_font(label_style)
            .draw()?;
        root.present()?;
        Ok(())
    })();
    if let Err(error) = drawn {
        tracing::warn!(%error, "chart not drawn");
        return None;
    }
    Some(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_well_formed_svg_with_its_series() {
        let svg = line_chart(&[
            Series { name: "pulls", color: PULLS, points: vec![("2026-02-01".into(), 10), ("2026-02-03".into(), 25)] },
            Series { name: "pushes", color: PUSHES, points: vec![("2026-02-01".into(), 1)] },
        ])
        .unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("pulls") && svg.contains("pushes"));
        assert!(svg.contains("02-01"), "x labels are days");
        let mut reader = quick_xml::Reader::from_str(&svg);
        loop {
            match reader.read_event() {
                Ok(quick_xml::events::Event::Eof) => break,
                Ok(_) => {}
                Err(error) => panic!("not XML: {error}"),
            }
        }
        assert!(line_chart(&[Series { name: "x", color: PULLS, points: vec![] }]).is_none());
        assert!(
            line_chart(&[Series { name: "x", color: PULLS, points: vec![("junk".into(), 1)] }]).is_none(),
            "unreadable days draw nothing"
        );
    }
}
