/** The upload is one byte stream: the files concatenated in manifest order (docs/upload-api.md). */

export interface Piece {
  /** Which file of the manifest. */
  file: number;
  /** Byte range inside that file, end exclusive. */
  start: number;
  end: number;
}

export function totalChunks(totalSize: number, chunkSize: number): number {
  return Math.ceil(totalSize / chunkSize);
}

/** The byte range of the stream that chunk `index` covers. */
export function chunkRange(index: number, chunkSize: number, totalSize: number): [number, number] {
  const start = index * chunkSize;
  if (index < 0 || start >= totalSize) throw new RangeError(`chunk ${index} is outside the upload`);
  return [start, Math.min(start + chunkSize, totalSize)];
}

/** The pieces of the files that make up chunk `index`; empty files contribute nothing. */
export function chunkPieces(sizes: readonly number[], chunkSize: number, index: number): Piece[] {
  const total = sizes.reduce((a, b) => a + b, 0);
  const [start, end] = chunkRange(index, chunkSize, total);
  const pieces: Piece[] = [];
  let offset = 0;
  sizes.forEach((size, file) => {
    const fileStart = offset;
    const fileEnd = offset + size;
    offset = fileEnd;
    const from = Math.max(start, fileStart);
    const to = Math.min(end, fileEnd);
    if (from < to) pieces.push({ file, start: from - fileStart, end: to - fileStart });
  });
  return pieces;
}

/** Chunk `index` as a Blob made of slices of the stored files: nothing is read into memory. */
export function chunkBlob(files: readonly Blob[], chunkSize: number, index: number): Blob {
  const pieces = chunkPieces(
    files.map((f) => f.size),
    chunkSize,
    index,
  );
  return new Blob(pieces.map((p) => files[p.file]!.slice(p.start, p.end)));
}
