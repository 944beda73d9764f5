import { describe, expect, it } from "vitest";
import { chunkBlob, chunkPieces, chunkRange, totalChunks } from "./chunks";

describe("chunks of the upload stream", () => {
  it("covers the files concatenated in manifest order, across file boundaries", () => {
    // Files of 5, 0, 3 and 7 bytes; chunks of 4 bytes.
    const sizes = [5, 0, 3, 7];
    expect(totalChunks(15, 4)).toBe(4);
    expect(chunkPieces(sizes, 4, 0)).toEqual([{ file: 0, start: 0, end: 4 }]);
    expect(chunkPieces(sizes, 4, 1)).toEqual([
      { file: 0, start: 4, end: 5 },
      { file: 2, start: 0, end: 3 },
    ]);
    expect(chunkPieces(sizes, 4, 2)).toEqual([{ file: 3, start: 0, end: 4 }]);
    expect(chunkPieces(sizes, 4, 3)).toEqual([{ file: 3, start: 4, end: 7 }]);
  });

  it("gives the last chunk only the remaining bytes", () => {
    expect(chunkRange(3, 4, 15)).toEqual([12, 15]);
    expect(() => chunkRange(4, 4, 15)).toThrow(RangeError);
    expect(() => chunkRange(-1, 4, 15)).toThrow(RangeError);
  });

  it("builds each chunk's bytes from slices of the stored Blobs", async () => {
    const files = [new Blob(["abcde"]), new Blob([]), new Blob(["fgh"]), new Blob(["ijklmno"])];
    const text = [];
    for (let i = 0; i < 4; i++) text.push(await chunkBlob(files, 4, i).text());
    expect(text).toEqual(["abcd", "efgh", "ijkl", "mno"]);
  });

  it("handles a chunk spanning many small files", () => {
    const sizes = Array.from({ length: 10 }, () => 1);
    expect(chunkPieces(sizes, 8, 0)).toHaveLength(8);
    expect(chunkPieces(sizes, 8, 1)).toEqual([
      { file: 8, start: 0, end: 1 },
      { file: 9, start: 0, end: 1 },
    ]);
  });
});
