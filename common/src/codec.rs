//! Object body compression. A part is written as a sequence of independent zstd frames or gzip
//! members (DESIGN §2 "Memory"); both formats define a concatenation of those as one valid stream,
//! so readers see one NDJSON document.

use std::cell::RefCell;
use std::io::{Read, Write};

use crate::key::Codec;

/// Why a body could not be decompressed.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the {codec} stream is corrupt: {source}")]
    Corrupt {
        codec: Codec,
        #[source]
        source: std::io::Error,
    },
    #[error("the body decompresses to more than {limit} bytes")]
    TooLarge { limit: u64 },
}

thread_local! {
    /// Each thread's zstd context and its level: a context costs far more to set up than a
    /// small frame costs to compress, and parts are compressed in many small frames.
    static ZSTD: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
}

/// Compresses `raw` as one frame (zstd at `level`) or member (gzip).
pub fn compress(codec: Codec, raw: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    match codec {
        Codec::Zstd => ZSTD.with_borrow_mut(|cached| {
            let compressor = match cached {
                Some((cached_level, compressor)) if *cached_level == level => compressor,
                slot => &mut slot.insert((level, zstd::bulk::Compressor::new(level)?)).1,
            };
            compressor.compress(raw)
        }),
        Codec::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(raw.len() / 4),
                flate2::Compression::default(),
            );
            encoder.write_all(raw)?;
            encoder.finish()
        }
        Codec::None => Ok(raw.to_vec()),
    }
}

/// Decompresses a body of concatenated frames or members, refusing to produce more than
/// `limit` bytes (a body is never trusted to be small).
pub fn decompress(codec: Codec, body: &[u8], limit: u64) -> Result<Vec<u8>, DecodeError> {
    let mut raw = Vec::new();
    decoder(codec, body)?
        .take(limit.saturating_add(1))
        .read_to_end(&mut raw)
        .map_err(|source| DecodeError::Corrupt { codec, source })?;
    if raw.len() as u64 > limit {
        return Err(DecodeError::TooLarge { limit });
    }
    Ok(raw)
}

/// A reader of the decompressed stream of `body`, for reading it a piece at a time; a reader
/// must bound what it takes (`Read::take`), since a body is never trusted to be small.
pub fn decoder(codec: Codec, body: &[u8]) -> Result<Box<dyn Read + '_>, DecodeError> {
    Ok(match codec {
        Codec::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(body)
                .map_err(|source| DecodeError::Corrupt { codec, source })?,
        ),
        Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(body)),
        Codec::None => Box::new(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODECS: [Codec; 3] = [Codec::Zstd, Codec::Gzip, Codec::None];

    #[test]
    fn concatenated_frames_decompress_as_one_stream() {
        for codec in CODECS {
            let mut body = compress(codec, b"{\"id\":\"1\"}\n", 3).expect("first");
            body.extend(compress(codec, b"{\"id\":\"2\"}\n", 3).expect("second"));
            let raw = decompress(codec, &body, 1024).expect("decompress");
            assert_eq!(raw, b"{\"id\":\"1\"}\n{\"id\":\"2\"}\n", "{codec}");
        }
    }

    #[test]
    fn output_past_the_limit_is_refused() {
        for codec in CODECS {
            let body = compress(codec, &[b'x'; 4096], 3).expect("compress");
            assert!(
                matches!(
                    decompress(codec, &body, 4095),
                    Err(DecodeError::TooLarge { limit: 4095 })
                ),
                "{codec}"
            );
            assert_eq!(decompress(codec, &body, 4096).expect("fits").len(), 4096);
        }
    }

    #[test]
    fn a_corrupt_stream_is_an_error_not_a_panic() {
        for codec in [Codec::Zstd, Codec::Gzip] {
            let mut body = compress(codec, b"{\"id\":\"1\"}\n", 3).expect("compress");
            body.truncate(body.len() / 2);
            assert!(matches!(
                decompress(codec, &body, 1024),
                Err(DecodeError::Corrupt { .. })
            ));
        }
    }
}
