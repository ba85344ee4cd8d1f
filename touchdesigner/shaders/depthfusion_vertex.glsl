// DepthFusion GLSL MAT, vertex stage (TouchDesigner supplies P, TDDeform and TDWorldToProj).
// Each vertex moves along its direction from the centre to the radius its depth gives.

out DepthFusionVertex {
    vec3 direction;  // undisplaced unit direction: the pixel stage derives the texture u, v from it
    float keep;      // 0 next to a depth edge (see dfDisplace)
} oVert;

void main()
{
    vec3 direction = normalize(P);
    vec4 displaced = dfDisplace(direction);
    oVert.direction = direction;
    oVert.keep = displaced.w;
    gl_Position = TDWorldToProj(TDDeform(displaced.xyz));
}
