//! Reading recorded firehose files: repeated `[u32 little-endian length][frame bytes]`, the
//! format of `shared/firehose-corpus/corpus.bin` and `fixtures/demo/firehose.bin`.

/// Splits a recording into frames. A truncated tail is reported, never read past.
pub fn split_frames(bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut frames = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some((length, tail)) = rest.split_first_chunk::<4>() else {
            return Err(format!("truncated length prefix after {} frames", frames.len()));
        };
        let length = u32::from_le_bytes(*length) as usize;
        if tail.len() < length {
            return Err(format!("frame {} claims {length} bytes, {} remain", frames.len(), tail.len()));
        }
        let (frame, tail) = tail.split_at(length);
        frames.push(frame);
        rest = tail;
    }
    Ok(frames)
}

/// Writes frames in the same format.
pub fn join_frames<'a>(frames: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(frame);
    }
    out
}
