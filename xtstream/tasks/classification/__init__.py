"""The scene-classification task: a ``scene_id,label`` CSV, the ``classification`` head, cross-entropy
of a scene's running logits. Torch loads only when the loss is first computed."""

from xtstream.tasks.classification.task import TARGET, ClassificationTask, SceneClass

__all__ = ["TARGET", "ClassificationTask", "SceneClass"]
