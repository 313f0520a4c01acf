//! Window definitions and assignment (pure functions): tumbling, hopping
//! and session windows over epoch milliseconds, epoch-aligned.

use serde::{Deserialize, Serialize};
use sluice_engine::error::Invalid;
use sluice_engine::time::HumanDuration;

/// `window = { type = "tumbling", size = "1m" }`, `{ type = "hopping",
/// size = "5m", slide = "1m" }` or `{ type = "session", gap = "30s" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowConfig {
    /// Fixed, non-overlapping windows of `size`.
    Tumbling {
        /// Window length, e.g. "1m".
        size: HumanDuration,
    },
    /// Windows of `size` starting every `slide` (an event is in size/slide windows).
    Hopping {
        /// Window length.
        size: HumanDuration,
        /// Distance between window starts; must divide `size`.
        slide: HumanDuration,
    },
    /// Per-key activity sessions that close after `gap` without events.
    Session {
        /// Inactivity gap that ends a session.
        gap: HumanDuration,
    },
}

impl WindowConfig {
    /// Checks sizes; returns a message for the user on error.
    pub fn validate(&self) -> Result<(), Invalid> {
        match *self {
            WindowConfig::Tumbling { size } if size.as_millis() <= 0 => {
                Err("window `size` must be positive".into())
            }
            WindowConfig::Hopping { size, slide } => {
                let (size, slide) = (size.as_millis(), slide.as_millis());
                if size <= 0 || slide <= 0 {
                    Err("window `size` and `slide` must be positive".into())
                } else if slide > size {
                    Err("`slide` larger than `size` would leave gaps between windows".into())
                } else if size % slide != 0 {
                    Err(Invalid::new(format!(
                        "`slide` ({slide} ms) must divide `size` ({size} ms)"
                    )))
                } else if size / slide > 1000 {
                    Err("more than 1000 overlapping windows per event; use a larger `slide`".into())
                } else {
                    Ok(())
                }
            }
            WindowConfig::Session { gap } if gap.as_millis() <= 0 => {
                Err("session `gap` must be positive".into())
            }
            _ => Ok(()),
        }
    }
}

/// Start of the window of length `slide` containing `t` (epoch aligned).
pub fn align(t: i64, slide: i64) -> i64 {
    t.div_euclid(slide) * slide
}

/// Starts of every window `[start, start + size)` containing `t`, for
/// windows starting every `slide` ms (tumbling: slide == size), oldest first.
pub fn assign(t: i64, size: i64, slide: i64) -> impl Iterator<Item = i64> {
    let last = align(t, slide);
    let count = size / slide;
    (0..count)
        .rev()
        .map(move |k| last - k * slide)
        .filter(move |&s| s <= t && t < s.saturating_add(size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tumbling() {
        assert_eq!(
            assign(61_000, 60_000, 60_000).collect::<Vec<_>>(),
            vec![60_000]
        );
        assert_eq!(assign(59_999, 60_000, 60_000).collect::<Vec<_>>(), vec![0]);
        assert_eq!(
            assign(-1, 60_000, 60_000).collect::<Vec<_>>(),
            vec![-60_000]
        );
    }

    #[test]
    fn hopping() {
        assert_eq!(assign(130, 100, 50).collect::<Vec<_>>(), vec![50, 100]);
        assert_eq!(assign(100, 100, 50).collect::<Vec<_>>(), vec![50, 100]);
        assert_eq!(assign(99, 100, 50).collect::<Vec<_>>(), vec![0, 50]);
    }

    #[test]
    fn validation() {
        let d = HumanDuration::from_millis;
        assert!(WindowConfig::Hopping {
            size: d(100),
            slide: d(30)
        }
        .validate()
        .is_err());
        assert!(WindowConfig::Hopping {
            size: d(100),
            slide: d(200)
        }
        .validate()
        .is_err());
        assert!(WindowConfig::Tumbling { size: d(0) }.validate().is_err());
        assert!(WindowConfig::Hopping {
            size: d(100),
            slide: d(25)
        }
        .validate()
        .is_ok());
        let w: WindowConfig = toml::from_str("type = \"tumbling\"\nsize = \"1m\"").unwrap();
        assert_eq!(w, WindowConfig::Tumbling { size: d(60_000) });
    }

    proptest! {
        #[test]
        fn every_assigned_window_contains_t(t in -1_000_000i64..1_000_000, slide in 1i64..500, mult in 1i64..6) {
            let size = slide * mult;
            let starts: Vec<i64> = assign(t, size, slide).collect();
            prop_assert_eq!(starts.len() as i64, mult);
            for s in starts {
                prop_assert!(s <= t && t < s + size);
                prop_assert_eq!(s.rem_euclid(slide), 0);
            }
        }
    }
}
