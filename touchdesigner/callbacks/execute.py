# Execute DAT of the DepthFusion component: once per frame, hand over to the extension.

def onFrameStart(frame):
    parent().ext.DepthFusionExt.OnFrameStart(frame)
