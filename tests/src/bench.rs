//! What the bench binaries share: settings from the environment, the realistic event they post,
//! and percentiles.

/// The setting `name` from the environment, or `default` when unset; panics naming the variable
/// when it is set to something that does not parse.
pub fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a valid value")),
        Err(_) => default,
    }
}

/// A realistic event of about 490 bytes as compact JSON: an admin locking a device.
pub fn realistic_event(tenant: &str, id: &str) -> String {
    format!(
        concat!(
            r#"{{"id":"{}","tenant_id":"{}","type":"device.lock","occurred_at":"2026-11-27T10:15:30.123Z","#,
            r#""actor":{{"type":"admin","id":"usr_8f14e45fceea167a5a36dedd4bea2543","email":"it-admin@example.com","ip":"203.0.113.42"}},"#,
            r#""target":{{"type":"device","id":"dev_c9f0f895fb98ab9159f51fd0297e236d","name":"MacBook Pro (Finance-0423)","serial":"C02XK1ZZJGH5"}},"#,
            r#""details":{{"reason":"Lost device reported by owner","message":"Locked via MDM command","pin_set":true,"blueprint":"Finance Laptops"}}}}"#
        ),
        id, tenant
    )
}

/// The value at `p` (0 to 1, nearest rank) of `sorted`, or `None` when it is empty.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    let rank = (last as f64 * p).round() as usize;
    Some(sorted[rank.min(last)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let values: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.5), Some(51));
        assert_eq!(percentile(&values, 0.99), Some(99));
        assert_eq!(percentile(&values, 1.0), Some(100));
        assert_eq!(percentile::<u32>(&[], 0.5), None);
    }

    #[test]
    fn the_realistic_event_is_one_line_of_json_with_its_tenant_and_id() {
        let line = realistic_event("acme", "e-1");
        let event: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(event["tenant_id"], "acme");
        assert_eq!(event["id"], "e-1");
        assert!(!line.contains('\n'));
    }
}
