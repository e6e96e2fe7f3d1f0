//! Feeds arbitrary message headers to the upload-job decoder: whatever a broker, a redrive by
//! hand or a bug puts in a message. Besides "never panics", it checks what the uploader relies
//! on: a decoded job's key lies under its own tenant, and a job re-encodes to headers that
//! decode to the same job.
#![no_main]

use common::job::{UploadJob, header};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use libfuzzer_sys::fuzz_target;

/// Every header name the decoder knows, so most inputs reach past "missing header".
const NAMES: [&str; 13] = [
    header::TENANT,
    header::RELATIVE_KEY,
    header::CODEC,
    header::EVENT_COUNT,
    header::WINDOW_START,
    header::WINDOW_END,
    header::PARTITION,
    header::FIRST_OFFSET,
    header::LAST_OFFSET,
    header::UNCOMPRESSED_BYTES,
    header::SHA256,
    header::CREATED_AT,
    header::ATTEMPT,
];

/// One header: which name (or an arbitrary one), which AMQP type, and the raw value.
type Entry = (u8, u8, String, i64);

fn value(kind: u8, text: &str, number: i64) -> AMQPValue {
    match kind % 8 {
        0 => AMQPValue::LongString(LongString::from(text.as_bytes().to_vec())),
        // AMQP short strings hold at most 255 bytes; a broker cannot deliver a longer one.
        1 => AMQPValue::ShortString(ShortString::from(
            text.char_indices()
                .take_while(|(at, c)| at + c.len_utf8() <= 255)
                .map(|(_, c)| c)
                .collect::<String>(),
        )),
        2 => AMQPValue::LongLongInt(number),
        3 => AMQPValue::LongInt(number as i32),
        4 => AMQPValue::LongUInt(number as u32),
        5 => AMQPValue::Boolean(number % 2 == 0),
        6 => AMQPValue::ShortInt(number as i16),
        _ => AMQPValue::Void,
    }
}

fuzz_target!(|entries: Vec<Entry>| {
    let mut table = FieldTable::default();
    for (name, kind, text, number) in &entries {
        let name = match NAMES.get(usize::from(*name)) {
            Some(known) => (*known).to_owned(),
            None => text.chars().take(16).collect(),
        };
        table.insert(ShortString::from(name), value(*kind, text, *number));
    }
    let Ok(job) = UploadJob::from_headers(&table) else {
        return;
    };
    assert!(
        job.relative_key
            .starts_with(&format!("{}/", job.tenant_id.as_str())),
        "a job's key lies under its own tenant: {}",
        job.relative_key
    );
    assert!(!job.relative_key.contains(".."), "{}", job.relative_key);
    let again = UploadJob::from_headers(&job.to_headers()).expect("a job's own headers decode");
    assert_eq!(again, job);
});
