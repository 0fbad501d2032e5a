//! The hand-off between the stream task and the writer: a channel of [`Piece`]s bounded by the
//! number of **rows** in flight rather than the number of pieces. Thousands of one-row
//! transactions can wait to be written in one batch, while a large transaction's chunks still
//! hold the stream back once the writer falls behind — memory stays bounded either way.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};

use crate::assembler::Piece;

/// The stream task's end.
#[derive(Debug)]
pub(crate) struct PieceSender {
    pieces: mpsc::UnboundedSender<Piece>,
    budget: Arc<Semaphore>,
    max_rows: usize,
}

/// The writer's end.
#[derive(Debug)]
pub(crate) struct PieceReceiver {
    pieces: mpsc::UnboundedReceiver<Piece>,
    budget: Arc<Semaphore>,
    max_rows: usize,
}

/// Pieces taken together for one destination write.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// The pieces, in stream order.
    pub pieces: Vec<Piece>,
    /// Their rows.
    pub rows: usize,
    permits: usize,
}

/// The writer is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the destination writer stopped")]
pub(crate) struct WriterGone;

/// A channel that lets at most `max_rows` rows (and at most `max_rows` pieces) wait.
pub(crate) fn channel(max_rows: usize) -> (PieceSender, PieceReceiver) {
    let max_rows = max_rows.max(1);
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Semaphore::new(max_rows));
    (
        PieceSender {
            pieces: tx,
            budget: Arc::clone(&budget),
            max_rows,
        },
        PieceReceiver {
            pieces: rx,
            budget,
            max_rows,
        },
    )
}

fn permits(piece: &Piece, max_rows: usize) -> usize {
    piece.rows.len().clamp(1, max_rows)
}

impl PieceSender {
    /// Hands `piece` over, waiting while too many rows are in flight.
    pub(crate) async fn send(&self, piece: Piece) -> Result<(), WriterGone> {
        let permits = permits(&piece, self.max_rows) as u32;
        self.budget
            .acquire_many(permits)
            .await
            .map_err(|_| WriterGone)?
            .forget();
        self.pieces.send(piece).map_err(|_| WriterGone)
    }
}

impl PieceReceiver {
    /// Waits for at least one piece, then takes every piece already waiting, up to `max_rows`
    /// rows. `None` once the sender is gone and everything was taken.
    pub(crate) async fn recv_batch(&mut self, max_rows: usize) -> Option<Batch> {
        let first = self.pieces.recv().await?;
        let mut batch = Batch::default();
        self.push(&mut batch, first);
        while batch.rows < max_rows {
            match self.pieces.try_recv() {
                Ok(piece) => self.push(&mut batch, piece),
                Err(_) => break,
            }
        }
        Some(batch)
    }

    fn push(&self, batch: &mut Batch, piece: Piece) {
        batch.rows += piece.rows.len();
        batch.permits += permits(&piece, self.max_rows);
        batch.pieces.push(piece);
    }

    /// Makes room for more pieces once `batch` is written.
    pub(crate) fn release(&self, batch: &Batch) {
        self.budget.add_permits(batch.permits);
    }
}

impl Drop for PieceReceiver {
    /// A sender waiting for room fails with [`WriterGone`] instead of waiting forever: the
    /// room it waits for is only ever made by this receiver.
    fn drop(&mut self) {
        self.budget.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn pieces_sent_come_out_as_one_batch() {
        use crate::assembler::Piece;

        let (sender, mut receiver) = channel(100);
        for lsn in 1..=3 {
            sender
                .send(Piece {
                    commit_lsn: lsn,
                    rows: vec![],
                    end_lsn: Some(lsn + 1),
                    ..Piece::default()
                })
                .await
                .unwrap();
        }
        let batch = receiver.recv_batch(1000).await.unwrap();
        assert_eq!(batch.pieces.len(), 3);
        receiver.release(&batch);
    }

    #[tokio::test]
    async fn a_sender_waiting_for_room_fails_when_the_writer_is_gone() {
        use crate::assembler::Piece;

        let (sender, receiver) = channel(1);
        let piece = |lsn| Piece {
            commit_lsn: lsn,
            end_lsn: Some(lsn + 1),
            ..Piece::default()
        };
        sender.send(piece(1)).await.unwrap();
        let waiting = tokio::spawn(async move { sender.send(piece(2)).await });
        tokio::task::yield_now().await;
        drop(receiver);
        let sent = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the waiting sender was woken")
            .unwrap();
        assert_eq!(sent, Err(WriterGone));
    }

    #[tokio::test]
    async fn sending_after_the_writer_is_gone_fails() {
        let (sender, receiver) = channel(10);
        drop(receiver);
        let piece = Piece {
            commit_lsn: 1,
            rows: vec![],
            end_lsn: None,
            ..Piece::default()
        };
        assert!(sender.send(piece).await.is_err());
    }

    #[tokio::test]
    async fn a_closed_channel_gives_no_batch() {
        let (sender, mut receiver) = channel(10);
        drop(sender);
        assert!(receiver.recv_batch(100).await.is_none());
    }

    fn piece(rows: usize) -> Piece {
        let row = crate::rows::ChangeRow {
            primary_key: None,
            before: "{}".into(),
            after: "{}".into(),
            context: Arc::from("{}"),
            schema: "public".into(),
            table: "t".into(),
            operation: bemi_core::protocol::Operation::Create,
            committed_at: 0,
            queued_at: 0,
            transaction_id: 1,
            position: 1,
        };
        Piece {
            commit_lsn: 1,
            rows: vec![row; rows],
            end_lsn: None,
            ..Piece::default()
        }
    }

    #[tokio::test]
    async fn rows_in_flight_are_bounded_until_released() {
        let (sender, mut receiver) = channel(10);
        sender.send(piece(6)).await.unwrap();
        // 6 + 6 > 10: the second chunk waits for the writer.
        let blocked = tokio::time::timeout(Duration::from_millis(50), sender.send(piece(6))).await;
        assert!(blocked.is_err());
        let batch = receiver.recv_batch(100).await.unwrap();
        assert_eq!(batch.rows, 6);
        receiver.release(&batch);
        tokio::time::timeout(Duration::from_secs(5), sender.send(piece(6)))
            .await
            .expect("room after release")
            .unwrap();
    }

    #[tokio::test]
    async fn batches_stop_at_the_row_limit_and_oversized_chunks_still_pass() {
        let (sender, mut receiver) = channel(5);
        sender.send(piece(50)).await.unwrap();
        let batch = receiver.recv_batch(10).await.unwrap();
        assert_eq!((batch.pieces.len(), batch.rows), (1, 50));
        receiver.release(&batch);
        for _ in 0..5 {
            sender.send(piece(1)).await.unwrap();
        }
        let batch = receiver.recv_batch(3).await.unwrap();
        assert_eq!(batch.rows, 3);
    }
}
