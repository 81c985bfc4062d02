"""The evaluation's classifier for a workdir, for the scripts in this folder.

`load(workdir)` returns the run's `Pipeline`, its training and held-out splits and the
classifier's probability function (trained on the training split and cached as `jaxddpm
eval` does), so a script scores samples exactly as the evaluation does.
"""

from jaxddpm import Pipeline, classifier, data, evaluate


def load(workdir: str):
    pipe = Pipeline.from_workdir(workdir)
    train_set, held_out = data.load_splits(pipe.config.data)
    params = classifier.cached_classifier(train_set.images, train_set.labels, train_set.num_classes,
                                          evaluate.default_cache_dir(pipe.config))
    probs_fn, _ = classifier.classifier_fns(params, train_set.num_classes)
    return pipe, train_set, held_out, probs_fn
