"""UVO v1.0's video-format annotation files read as COCO instances, one image per frame
(docs/protocols.md#17-coco-and-uvo).

UVO's FrameSet files (``UVO_frame_{train,val}.json``) are COCO instances already. Its VideoSparseSet and
VideoDenseSet files (``UVO_sparse_{train,val}_video.json``, ``UVO_video_{train,val}_dense.json``) have the
YouTube-VIS layout: ``videos``, each with the ``file_names`` of its frames, and ``annotations`` that are tracks,
each with one ``segmentations``, ``bboxes`` and ``areas`` entry per frame (null where the object is not in the
frame). `frames_as_coco` turns such a file into COCO instances with ids that say where they come from:
image ``video id * 10000 + frame index``, annotation ``track id * 10000 + frame index``.
"""

from __future__ import annotations

from typing import Any

from ovis.data.coco import CocoFormatError, is_coco_id

__all__ = ["FRAME_ID_BASE", "frames_as_coco", "is_video_file"]

# image id = video id * FRAME_ID_BASE + frame index (and likewise for annotations): a video has fewer frames
FRAME_ID_BASE = 10_000
_PER_FRAME = ("segmentations", "bboxes", "areas")


def is_video_file(data: Any) -> bool:
    """Whether a parsed annotation file has the YouTube-VIS video layout: ``videos`` and no ``images`` (a COCO file
    that also lists videos is read as the COCO file it is)."""
    return isinstance(data, dict) and "videos" in data and "images" not in data


def frames_as_coco(data: dict, name: str) -> dict:
    """COCO instances of a video-format file: an image per entry of a video's ``file_names`` (that entry as
    ``file_name``, the video's ``height`` and ``width``, ``video_id``, ``frame_index``) and an annotation per track
    and frame with a mask (the track's ``category_id`` and ``iscrowd``, the frame's ``segmentation``, ``bbox`` and
    ``area``, ``track_id``); ``categories`` and ``info`` as they are. The structure is checked here
    (CocoFormatError naming the file, the video or track, the frame and the key); the images, masks and boxes
    are left to ``validate_coco``, whose messages name the composed ids."""
    for key in ("videos", "annotations"):
        if not isinstance(data.get(key, []), list):
            raise CocoFormatError(f"{name}: {key!r} is a {type(data[key]).__name__}, expected a list (a video-format "
                                  "file as UVO's VideoDenseSet / VideoSparseSet)")
    videos: list = data["videos"]
    tracks: list = data.get("annotations", [])
    images: list[dict] = []
    frames: dict[Any, int] = {}  # video id -> its number of frames
    for i, video in enumerate(videos):
        vid = video.get("id") if isinstance(video, dict) else None
        if not is_coco_id(vid):
            raise CocoFormatError(f"{name}: video at index {i} has no integer 'id'")
        files = video.get("file_names")
        if (type(files) is not list or not files or len(files) >= FRAME_ID_BASE
                or not all(isinstance(f, str) and f.strip() for f in files)):
            raise CocoFormatError(f"{name}: video {vid}: 'file_names' is {files!r:.60}, expected a list of 1 to "
                                  f"{FRAME_ID_BASE - 1} frame file names")
        frames[vid] = len(files)
        images += [{"id": vid * FRAME_ID_BASE + f, "file_name": file, "height": video.get("height"),
                    "width": video.get("width"), "video_id": vid, "frame_index": f} for f, file in enumerate(files)]
    annotations: list[dict] = []
    for i, track in enumerate(tracks):
        tid = track.get("id") if isinstance(track, dict) else None
        if not is_coco_id(tid):
            raise CocoFormatError(f"{name}: annotation (track) at index {i} has no integer 'id'")
        vid = track.get("video_id")
        if vid not in frames:
            raise CocoFormatError(f"{name}: annotation {tid}: 'video_id' {vid!r:.40} is not a video id in 'videos'")
        for key in _PER_FRAME:
            value = track.get(key)
            if type(value) is not list or len(value) != frames[vid]:
                got = f"{len(value)} entries" if type(value) is list else f"{value!r:.40}"
                raise CocoFormatError(f"{name}: annotation {tid} (video {vid}): {key!r} has {got}, expected one per "
                                      f"frame of the video ({frames[vid]})")
        for f, (segm, bbox, area) in enumerate(zip(*(track[key] for key in _PER_FRAME))):
            if segm is None:
                continue
            if bbox is None or area is None:
                missing = "bboxes" if bbox is None else "areas"
                raise CocoFormatError(f"{name}: annotation {tid} (video {vid}), frame {f}: a mask but no {missing!r} "
                                      "entry")
            ann = {"id": tid * FRAME_ID_BASE + f, "image_id": vid * FRAME_ID_BASE + f,
                   "category_id": track.get("category_id"), "segmentation": segm, "bbox": bbox, "area": area,
                   "track_id": tid}
            if "iscrowd" in track:
                ann["iscrowd"] = track["iscrowd"]
            annotations.append(ann)
    out = {k: v for k, v in data.items() if k in ("info", "licenses")}
    out.update(images=images, annotations=annotations, categories=data.get("categories"))
    return out
