// DepthFusion GLSL MAT, vertex stage (TouchDesigner supplies the position input, TDDeform and
// TDWorldToProj). Each vertex moves along its direction from the centre to the radius its depth gives.
// DF_POSITION is the vertex position input of the running build (TDPos() or P): the one #define line
// in front of this text (touchdesigner/shader_source.py), rewritten by DepthFusionExt at start.

out DepthFusionVertex {
    vec3 direction;  // undisplaced unit direction: the pixel stage derives the texture u, v from it
    float keep;      // 0 next to a depth edge (see dfDisplace)
} oVert;

void main()
{
    vec3 direction = normalize(DF_POSITION);
    vec4 displaced = dfDisplace(direction);
    oVert.direction = direction;
    oVert.keep = displaced.w;
    gl_Position = TDWorldToProj(TDDeform(displaced.xyz));
}
