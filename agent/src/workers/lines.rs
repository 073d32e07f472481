//! Bounded line reading from a worker's pipes.
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Lines of a child's pipe as bytes. Unlike `AsyncBufReadExt::lines`, bytes that are not UTF-8 do
/// not end the stream (the line is handed on and refused by the decoder), and a line is kept only
/// up to one byte past the frame limit (the rest is skipped), so a worker cannot make the agent
/// buffer without bound. Cancel-safe: a partial line stays in `buf` until its newline arrives.
pub(crate) struct ByteLines<R> {
    reader: BufReader<R>,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> ByteLines<R> {
    pub(crate) fn new(r: R) -> Self {
        Self {
            reader: BufReader::new(r),
            buf: Vec::new(),
        }
    }

    /// The next line without its newline; `None` at end of stream.
    pub(crate) async fn next_line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            let chunk = self.reader.fill_buf().await?;
            if chunk.is_empty() {
                return Ok((!self.buf.is_empty()).then(|| std::mem::take(&mut self.buf)));
            }
            let newline = chunk.iter().position(|&b| b == b'\n');
            let part = &chunk[..newline.unwrap_or(chunk.len())];
            let room = (rbee_proto::MAX_FRAME_BYTES + 1).saturating_sub(self.buf.len());
            self.buf.extend_from_slice(&part[..part.len().min(room)]);
            let used = newline.map_or(chunk.len(), |i| i + 1);
            self.reader.consume(used);
            if newline.is_some() {
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_cut_and_bad_utf8_passes() {
        let mut input = vec![0xff, 0xfe, b'\n'];
        input.extend(std::iter::repeat_n(b'x', rbee_proto::MAX_FRAME_BYTES * 2));
        input.extend_from_slice(b"\nlast");
        let mut lines = ByteLines::new(&input[..]);
        assert_eq!(lines.next_line().await.unwrap().unwrap(), vec![0xff, 0xfe]);
        let long = lines.next_line().await.unwrap().unwrap();
        assert_eq!(long.len(), rbee_proto::MAX_FRAME_BYTES + 1);
        assert_eq!(lines.next_line().await.unwrap().unwrap(), b"last");
        assert!(lines.next_line().await.unwrap().is_none());
    }
}
