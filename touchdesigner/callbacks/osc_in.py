# OSC In DAT of the DepthFusion component (off by default): show control addresses the component.

def onReceiveOSC(dat, rowIndex, message, bytes, timeStamp, address, args, peer):
    parent().ext.DepthFusionExt.OnOsc(address, args)
