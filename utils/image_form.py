"""The one form in which images reach every network family: float32 BGR minus DeepLab-v2's
mean colour (the caffe ImageNet mean of its initial weights), no scaling by a std.

The datasets produce it (``dataset/transforms.py``); DeepLab-v2 reads it as it is, and a family
with its own normalisation (DAFormer's) converts it as its first operation.
"""

IMG_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
