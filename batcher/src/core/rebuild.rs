//! How a rebuild after a crash or a handover makes exactly the parts the first run made: the
//! checkpoint it starts from, and what it does with each record it reads again (DESIGN §3).

use serde::{Deserialize, Serialize};

/// A window close: from `offset` on, windows ending at or before `closed_until_ms` are closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Close {
    pub closed_until_ms: i64,
    pub offset: i64,
}

/// What a rebuild starting at `commit_offset` needs to make exactly the parts the first run
/// made (DESIGN §3). Records in `[commit_offset, resume_offset)` were read before; the closes
/// between those offsets say which of them went into parts already published (skipped on
/// rebuild) and which into parts still open (rebuilt). From `resume_offset` on, reading goes
/// on with the stream time and closes the first run had reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub commit_offset: i64,
    pub resume_offset: i64,
    pub stream_time_ms: Option<i64>,
    pub closed_until_ms: Option<i64>,
    /// Windows ending at or before this were closed before `commit_offset`.
    pub closed_until_at_commit_ms: Option<i64>,
    /// Closes at offsets in `(commit_offset, resume_offset]`, in order.
    pub closes: Vec<Close>,
}

/// What a rebuild does with a record it reads again (below the checkpoint's resume offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reread {
    /// It is in a part the first run published.
    Skip,
    /// It is in a part that was open at the checkpoint.
    Keep { late: bool },
}

impl Checkpoint {
    /// Windows ending at or before this were closed for the record at `offset`.
    fn closed_until_at(&self, offset: i64) -> Option<i64> {
        self.closes
            .iter()
            .take_while(|close| close.offset <= offset)
            .map(|close| close.closed_until_ms)
            .last()
            .or(self.closed_until_at_commit_ms)
    }

    pub fn reread(&self, offset: i64, window_end_ms: i64) -> Reread {
        let closed_then = self
            .closed_until_at(offset)
            .is_some_and(|c| window_end_ms <= c);
        if closed_then {
            // A late record: its late part closed at the next close, if there was one.
            let closed_later = self.closes.iter().any(|close| close.offset > offset);
            if closed_later {
                Reread::Skip
            } else {
                Reread::Keep { late: true }
            }
        } else if self.closed_until_ms.is_some_and(|c| window_end_ms <= c) {
            Reread::Skip
        } else {
            Reread::Keep { late: false }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint committed at offset 100 and resumed at 110, windows of 10 ms: windows ending
    /// at or before 20 were closed before offset 100, a close at offset 105 closed those ending
    /// at or before 30, and the first run had closed through 30 when it took the checkpoint.
    fn checkpoint(closes: Vec<Close>) -> Checkpoint {
        Checkpoint {
            commit_offset: 100,
            resume_offset: 110,
            stream_time_ms: Some(45),
            closed_until_ms: closes.last().map(|c| c.closed_until_ms).or(Some(20)),
            closed_until_at_commit_ms: Some(20),
            closes,
        }
    }

    #[test]
    fn a_reread_record_goes_where_the_first_run_put_it() {
        let checkpoint = checkpoint(vec![Close {
            closed_until_ms: 30,
            offset: 105,
        }]);
        // (offset, end of the record's window) → what the rebuild does, and why.
        let table = [
            // Its window was open when it was read and closed at 105: published.
            ((101, 30), Reread::Skip),
            // Its window was still open when the checkpoint was taken: rebuilt.
            ((101, 40), Reread::Keep { late: false }),
            ((107, 40), Reread::Keep { late: false }),
            // Late when read (its window closed before 100), and its late part closed at 105.
            ((101, 20), Reread::Skip),
            // Late when read after the close at 105, and no close since: its late part is open.
            ((106, 30), Reread::Keep { late: true }),
            ((106, 20), Reread::Keep { late: true }),
        ];
        for ((offset, window_end), expected) in table {
            assert_eq!(
                checkpoint.reread(offset, window_end),
                expected,
                "offset {offset}, window ending at {window_end}"
            );
        }
    }

    #[test]
    fn without_closes_since_the_commit_a_late_record_is_in_an_open_late_part() {
        let checkpoint = checkpoint(Vec::new());
        assert_eq!(checkpoint.reread(103, 20), Reread::Keep { late: true });
        assert_eq!(checkpoint.reread(103, 30), Reread::Keep { late: false });
    }
}
